package vmm

import (
	"strings"
	"testing"
)

func TestLoadELF(t *testing.T) {
	m := newMemory(make([]byte, memSizeMinBytes))
	img := helloProgram()
	got, err := loadELF(m, img, m.Size()-stackReserveBytes)
	if err != nil {
		t.Fatal(err)
	}
	if got.Entry != LoadBase || got.HeapStart != LoadBase+testImageSize {
		t.Fatalf("image %+v", got)
	}
	code, _ := m.Slice(LoadBase, 5)
	if code[0] != 0xb8 {
		t.Fatalf("code not loaded: %x", code)
	}
	if err := writeBootInfo(m, got.HeapStart, "a=1 b=2"); err != nil {
		t.Fatal(err)
	}
	if magic, _ := m.ReadUint64(bootInfoAddr); magic != BootMagic {
		t.Fatalf("boot magic %#x", magic)
	}
	if err := writeBootInfo(m, 0, strings.Repeat("x", 256)); err == nil {
		t.Fatal("an over-long command line was accepted")
	}
}

func TestLoadELFRefusesBadImages(t *testing.T) {
	limit := uint64(memSizeMinBytes - stackReserveBytes)
	image := make([]byte, 0x100)
	cases := []struct {
		name string
		elf  []byte
		want string
	}{
		{"not ELF", []byte("#!/bin/sh\n"), "not an ELF"},
		{"script", []byte("#!/bin/sh\n"), `10 bytes, begins "#!/bin/sh\n": a script`},
		{"empty", nil, "0 bytes: the file is empty"},
		{"binary", []byte{0xca, 0xfe, 0xba, 0xbe, 0, 1}, "6 bytes, begins with bytes ca fe ba be 00 01"},
		{"below load base", buildTestELF(0x1000, 0x1000, image, 5), "outside the guest's program area"},
		{"into the stack", buildTestELF(limit-0x80, limit-0x80, image, 5), "outside the guest's program area"},
		{"wrapping", func() []byte {
			b := buildTestELF(LoadBase, LoadBase, image, 5)
			le.PutUint64(b[64+40:], ^uint64(0)-0x100) // p_memsz
			le.PutUint64(b[64+32:], 0x10)             // p_filesz
			return b
		}(), "outside"},
		{"file bytes missing", func() []byte {
			b := buildTestELF(LoadBase, LoadBase, image, 5)
			le.PutUint64(b[64+32:], 0x100000) // p_filesz
			le.PutUint64(b[64+40:], 0x100000) // p_memsz
			return b
		}(), "past the end"},
		{"entry outside", buildTestELF(LoadBase+0x5000, LoadBase, image, 5), "entry point"},
		{"entry not executable", buildTestELF(LoadBase, LoadBase, image, 6), "entry point"},
		{"PIE", func() []byte {
			b := buildTestELF(LoadBase, LoadBase, image, 5)
			le.PutUint16(b[16:], 3) // ET_DYN
			return b
		}(), "static executable"},
		{"not x86-64", func() []byte {
			b := buildTestELF(LoadBase, LoadBase, image, 5)
			le.PutUint16(b[18:], 183) // EM_AARCH64
			return b
		}(), "x86-64"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := newMemory(make([]byte, memSizeMinBytes))
			_, err := loadELF(m, c.elf, limit)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v; want one mentioning %q", err, c.want)
			}
		})
	}
}
