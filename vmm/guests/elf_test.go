package guests

import (
	"debug/elf"
	"path/filepath"
	"testing"
)

const (
	loadBase = 0x400000
	// imageBytesMax bounds how far above the load base an image may reach;
	// the guests are small, and a VM's memory must hold image, heap and stack.
	imageBytesMax = 16 << 20
)

// TestGuestELF checks the freestanding ELF files the way the VMM's loader
// will read them.
func TestGuestELF(t *testing.T) {
	dir := build(t, "all")
	for _, name := range []string{"kvstore", "memstress", "nondet"} {
		t.Run(name, func(t *testing.T) {
			f, err := elf.Open(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 || f.Data != elf.ELFDATA2LSB {
				t.Fatalf("class %v machine %v data %v, want 64-bit little-endian x86-64", f.Class, f.Machine, f.Data)
			}
			if f.Type != elf.ET_EXEC {
				t.Fatalf("type %v, want ET_EXEC (static, not position independent)", f.Type)
			}
			var loads int
			entryOK := false
			for _, p := range f.Progs {
				switch p.Type {
				case elf.PT_INTERP, elf.PT_DYNAMIC:
					t.Fatalf("has a %v segment: the guest must be statically linked", p.Type)
				case elf.PT_LOAD:
					loads++
					if p.Vaddr < loadBase || p.Vaddr+p.Memsz > loadBase+imageBytesMax {
						t.Errorf("PT_LOAD %#x+%#x is outside [%#x, %#x)", p.Vaddr, p.Memsz, loadBase, loadBase+imageBytesMax)
					}
					if p.Paddr != p.Vaddr {
						t.Errorf("PT_LOAD paddr %#x != vaddr %#x: the guest is identity mapped", p.Paddr, p.Vaddr)
					}
					if p.Flags&elf.PF_W != 0 && p.Flags&elf.PF_X != 0 {
						t.Errorf("PT_LOAD at %#x is writable and executable", p.Vaddr)
					}
					if p.Flags&elf.PF_X != 0 && f.Entry >= p.Vaddr && f.Entry < p.Vaddr+p.Memsz {
						entryOK = true
					}
				}
			}
			if loads == 0 {
				t.Fatal("no PT_LOAD segment")
			}
			if !entryOK {
				t.Fatalf("entry %#x is not inside an executable PT_LOAD segment", f.Entry)
			}
			for _, s := range f.Sections {
				if s.Type == elf.SHT_DYNAMIC || s.Name == ".interp" || s.Name == ".dynamic" {
					t.Fatalf("section %s: the guest must not be dynamically linked", s.Name)
				}
			}
			syms, err := f.Symbols()
			if err != nil {
				t.Fatal(err)
			}
			var start uint64
			for _, s := range syms {
				if s.Section == elf.SHN_UNDEF && s.Name != "" {
					t.Errorf("undefined symbol %s", s.Name)
				}
				if s.Name == "_start" {
					start = s.Value
				}
			}
			if start != f.Entry {
				t.Errorf("entry %#x is not _start (%#x)", f.Entry, start)
			}
		})
	}
}
