package vmm

import (
	"bytes"
	"debug/elf"
	"fmt"
	"unicode/utf8"
)

// Image describes a program loaded into guest memory.
type Image struct {
	Entry     uint64 // the ELF entry point
	HeapStart uint64 // the first page after the highest loaded byte
}

// loadELF copies the PT_LOAD segments of a statically linked x86-64 ELF
// executable (linked at LoadBase, see guest.ld) into guest memory. Every
// segment must lie within [LoadBase, limit), where limit is the bottom of
// the stack reserve; anything else is refused with the segment named.
func loadELF(mem *Memory, image []byte, limit uint64) (Image, error) {
	f, err := openELF(image)
	if err != nil {
		return Image{}, err
	}
	defer f.Close()
	var end uint64
	entryOK := false
	loaded := 0
	for i, p := range f.Progs {
		switch p.Type {
		case elf.PT_INTERP, elf.PT_DYNAMIC:
			return Image{}, fmt.Errorf("guest program segment %d is %v: it is dynamically linked; link it statically", i, p.Type)
		case elf.PT_LOAD:
		default:
			continue
		}
		if p.Filesz > p.Memsz {
			return Image{}, fmt.Errorf("segment %d: file size %d exceeds memory size %d", i, p.Filesz, p.Memsz)
		}
		if p.Vaddr < LoadBase || p.Vaddr > limit || p.Memsz > limit-p.Vaddr {
			return Image{}, fmt.Errorf("segment %d [%#x, +%#x) lies outside the guest's program area [%#x, %#x): relink at FTVM_LOAD_BASE or give the VM more memory", i, p.Vaddr, p.Memsz, LoadBase, limit)
		}
		if p.Off > uint64(len(image)) || p.Filesz > uint64(len(image))-p.Off {
			return Image{}, fmt.Errorf("segment %d: file bytes [%#x, +%#x) run past the end of the %d-byte file (truncated ELF?)", i, p.Off, p.Filesz, len(image))
		}
		if err := mem.Write(p.Vaddr, image[p.Off:p.Off+p.Filesz]); err != nil {
			return Image{}, fmt.Errorf("segment %d: %w", i, err)
		}
		// Guest memory may hold an older image: clear the bss explicitly.
		if err := mem.Write(p.Vaddr+p.Filesz, make([]byte, p.Memsz-p.Filesz)); err != nil {
			return Image{}, fmt.Errorf("segment %d bss: %w", i, err)
		}
		if e := p.Vaddr + p.Memsz; e > end {
			end = e
		}
		if p.Flags&elf.PF_X != 0 && f.Entry >= p.Vaddr && f.Entry < p.Vaddr+p.Memsz {
			entryOK = true
		}
		loaded++
	}
	if loaded == 0 {
		return Image{}, fmt.Errorf("guest program has no PT_LOAD segment")
	}
	if !entryOK {
		return Image{}, fmt.Errorf("entry point %#x is not inside an executable loaded segment", f.Entry)
	}
	heap := (end + PageBytes - 1) &^ (PageBytes - 1)
	return Image{Entry: f.Entry, HeapStart: heap}, nil
}

// CheckELF reports whether image can be a guest program: a 64-bit
// little-endian x86-64 static executable. What fits in guest memory is
// checked only at Load. A file that is no ELF at all is described: its
// size and how it begins.
func CheckELF(image []byte) error {
	f, err := openELF(image)
	if err != nil {
		return err
	}
	return f.Close()
}

func openELF(image []byte) (*elf.File, error) {
	f, err := elf.NewFile(bytes.NewReader(image))
	if err != nil {
		return nil, fmt.Errorf("guest program is not an ELF file: %s (%v)", describeFile(image), err)
	}
	if f.Class != elf.ELFCLASS64 || f.Data != elf.ELFDATA2LSB || f.Machine != elf.EM_X86_64 {
		f.Close()
		return nil, fmt.Errorf("guest program is %v %v %v; want a 64-bit little-endian x86-64 ELF", f.Class, f.Data, f.Machine)
	}
	if f.Type != elf.ET_EXEC {
		f.Close()
		return nil, fmt.Errorf("guest program is %v; want a static executable (ET_EXEC) linked at %#x: link with -static -no-pie -T guest.ld", f.Type, LoadBase)
	}
	return f, nil
}

// describeFileBytes is how much of a file describeFile shows.
const describeFileBytes = 16

// describeFile says what a file that is not an ELF looks like: empty, a
// script, text, or its first bytes in hex.
func describeFile(b []byte) string {
	if len(b) == 0 {
		return "0 bytes: the file is empty"
	}
	head := b[:min(len(b), describeFileBytes)]
	what := fmt.Sprintf("begins with bytes % x", head)
	switch {
	case bytes.HasPrefix(b, []byte("#!")):
		what = fmt.Sprintf("begins %q: a script", head)
	case utf8.Valid(head) && bytes.IndexFunc(head, func(r rune) bool { return r < 0x20 && r != '\n' && r != '\t' && r != '\r' }) < 0:
		what = fmt.Sprintf("begins %q: text", head)
	}
	return fmt.Sprintf("%d bytes, %s", len(b), what)
}
