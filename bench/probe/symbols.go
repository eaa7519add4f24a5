package probe

import (
	"debug/elf"
	"errors"
	"fmt"
)

// The probe points in the daemon (agent/probe.go), by their symbol names.
const (
	SymOutputHeld     = "github.com/ftvm/ftvm/agent.probeOutputHeld"
	SymAckReceived    = "github.com/ftvm/ftvm/agent.probeAckReceived"
	SymOutputReleased = "github.com/ftvm/ftvm/agent.probeOutputReleased"
)

// ErrStripped is returned for a binary without a symbol table.
var ErrStripped = errors.New("the binary has no symbol table (stripped, or linked with -ldflags=-s): rebuild ftvm without -s and without strip to probe it")

// ErrNoSymbol is returned for a symbol the binary does not have.
var ErrNoSymbol = errors.New("symbol not in the binary")

// FuncOffset is where function sym starts in the file of the executable
// at path: the offset a uprobe is set at. It reads the binary's own ELF
// symbol table, so a rebuilt daemon needs no change here.
func FuncOffset(path, sym string) (uint64, error) {
	offs, err := FuncOffsets(path, sym)
	if err != nil {
		return 0, err
	}
	return offs[sym], nil
}

// FuncOffsets is FuncOffset for several symbols, reading the file once.
func FuncOffsets(path string, syms ...string) (map[string]uint64, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("probe: opening the daemon's binary: %w", err)
	}
	defer f.Close()
	table, err := f.Symbols()
	if errors.Is(err, elf.ErrNoSymbols) {
		return nil, fmt.Errorf("probe: %s: %w", path, ErrStripped)
	}
	if err != nil {
		return nil, fmt.Errorf("probe: %s: reading its symbols: %w", path, err)
	}
	want := make(map[string]bool, len(syms))
	for _, s := range syms {
		want[s] = true
	}
	offs := make(map[string]uint64, len(syms))
	for _, s := range table {
		if !want[s.Name] || elf.ST_TYPE(s.Info) != elf.STT_FUNC {
			continue
		}
		off, err := fileOffset(f, s.Value)
		if err != nil {
			return nil, fmt.Errorf("probe: %s: %s: %w", path, s.Name, err)
		}
		offs[s.Name] = off
	}
	for _, s := range syms {
		if _, ok := offs[s]; !ok {
			return nil, fmt.Errorf("probe: %s: %s: %w (is it an ftvm binary of this version? the probe points are in agent/probe.go)", path, s, ErrNoSymbol)
		}
	}
	return offs, nil
}

// fileOffset maps a virtual address to its offset in the file, through
// the executable segment that loads it.
func fileOffset(f *elf.File, addr uint64) (uint64, error) {
	for _, p := range f.Progs {
		if p.Type != elf.PT_LOAD || p.Flags&elf.PF_X == 0 {
			continue
		}
		if addr >= p.Vaddr && addr < p.Vaddr+p.Filesz {
			return addr - p.Vaddr + p.Off, nil
		}
	}
	return 0, fmt.Errorf("address %#x is in no executable segment", addr)
}
