package vmm

import (
	"encoding/binary"
)

// A tiny x86-64 assembler and ELF writer for test guests: enough to build
// loops of device requests without a compiler, so that the VMM can be
// tested (and its exit cost measured) independently of the C guests.

// Test program layout: code at LoadBase, request structs from testReqBase
// (64 bytes apart), buffers from testBufBase. One RWX segment covers all.
const (
	testReqBase   = LoadBase + 0x1000
	testBufBase   = LoadBase + 0x2000
	testImageSize = 0x4000
)

type asm struct{ b []byte }

func (a *asm) emit(b ...byte) *asm { a.b = append(a.b, b...); return a }
func (a *asm) imm32(v uint32) *asm { a.b = binary.LittleEndian.AppendUint32(a.b, v); return a }
func (a *asm) pc() int             { return len(a.b) }

func (a *asm) movEAX(v uint32) *asm { return a.emit(0xb8).imm32(v) }
func (a *asm) movECX(v uint32) *asm { return a.emit(0xb9).imm32(v) }
func (a *asm) movEDX(v uint32) *asm { return a.emit(0xba).imm32(v) }
func (a *asm) movRBX(v uint64) *asm {
	a.emit(0x48, 0xbb)
	a.b = binary.LittleEndian.AppendUint64(a.b, v)
	return a
}

// doorbell issues one request as ftvm_doorbell does: movl %eax,(%rdx)
// with reqAddr in eax and the device's doorbell in rdx.
func (a *asm) doorbell(port uint16, reqAddr uint32) *asm {
	return a.movEAX(reqAddr).movEDX(uint32(DoorbellBase)+uint32(port)).emit(0x89, 0x02)
}
func (a *asm) decECX() *asm { return a.emit(0xff, 0xc9) }
func (a *asm) jnz(target int) *asm {
	a.emit(0x0f, 0x85)
	return a.imm32(uint32(int32(target - (a.pc() + 4))))
}
func (a *asm) jmp(target int) *asm {
	a.emit(0xe9)
	return a.imm32(uint32(int32(target - (a.pc() + 4))))
}

// movRAXFrom loads rax from an absolute address; movRAXTo stores it.
func (a *asm) movRAXFrom(addr uint32) *asm { return a.emit(0x48, 0x8b, 0x04, 0x25).imm32(addr) }
func (a *asm) movRAXTo(addr uint32) *asm   { return a.emit(0x48, 0x89, 0x04, 0x25).imm32(addr) }

// incByte increments the byte at an absolute address; incDword the
// 32-bit word.
func (a *asm) incByte(addr uint32) *asm  { return a.emit(0xfe, 0x04, 0x25).imm32(addr) }
func (a *asm) incDword(addr uint32) *asm { return a.emit(0xff, 0x04, 0x25).imm32(addr) }

// storeEAXAtRBX writes eax to [rbx]; addRBX adds an immediate.
func (a *asm) storeEAXAtRBX() *asm  { return a.emit(0x89, 0x03) }
func (a *asm) addRBX(v uint32) *asm { return a.emit(0x48, 0x81, 0xc3).imm32(v) }
func (a *asm) rdtsc() *asm          { return a.emit(0x0f, 0x31) }
func (a *asm) ud2() *asm            { return a.emit(0x0f, 0x0b) }

// halt ends the program with an exit code, using request slot slot.
func (a *asm) halt(p *testProgram, slot int, code uint64) *asm {
	return a.doorbell(PortHalt, p.req(slot, OpHaltExit, 0, 0, code))
}

// testProgram is the data part of a test guest: request structs and
// buffers, and the code that uses them.
type testProgram struct {
	code asm
	data [testImageSize - 0x1000]byte // from testReqBase
}

// req writes request struct number slot and returns its guest address.
func (p *testProgram) req(slot int, op uint32, addr uint64, n uint32, arg uint64) uint32 {
	at := slot * 64
	r := p.data[at : at+requestStructBytes]
	clear(r)
	binary.LittleEndian.PutUint32(r[reqOpOff:], op)
	binary.LittleEndian.PutUint64(r[reqAddrOff:], addr)
	binary.LittleEndian.PutUint32(r[reqLenOff:], n)
	binary.LittleEndian.PutUint64(r[reqArgOff:], arg)
	return uint32(testReqBase) + uint32(at)
}

// buf places bytes at a buffer offset and returns their guest address.
func (p *testProgram) buf(off int, b []byte) uint64 {
	copy(p.data[0x1000+off:], b)
	return testBufBase + uint64(off)
}

// elf returns the program as a static ELF executable at LoadBase.
func (p *testProgram) elf() []byte {
	image := make([]byte, testImageSize)
	copy(image, p.code.b)
	copy(image[0x1000:], p.data[:])
	return buildTestELF(LoadBase, LoadBase, image, 7)
}

// buildTestELF writes a minimal ELF64 executable: one PT_LOAD segment
// holding image at vaddr, with the given p_flags (7 = RWX).
func buildTestELF(entry, vaddr uint64, image []byte, flags uint32) []byte {
	const ehsize, phsize = 64, 56
	b := make([]byte, ehsize+phsize)
	copy(b, "\x7fELF")
	b[4], b[5], b[6] = 2, 1, 1 // ELFCLASS64, little-endian, version 1
	le := binary.LittleEndian
	le.PutUint16(b[16:], 2)  // ET_EXEC
	le.PutUint16(b[18:], 62) // EM_X86_64
	le.PutUint32(b[20:], 1)
	le.PutUint64(b[24:], entry)
	le.PutUint64(b[32:], ehsize) // phoff
	le.PutUint16(b[52:], ehsize)
	le.PutUint16(b[54:], phsize)
	le.PutUint16(b[56:], 1) // phnum
	ph := b[ehsize:]
	le.PutUint32(ph[0:], 1) // PT_LOAD
	le.PutUint32(ph[4:], flags)
	off := uint64(0x1000)
	le.PutUint64(ph[8:], off)
	le.PutUint64(ph[16:], vaddr)
	le.PutUint64(ph[24:], vaddr)
	le.PutUint64(ph[32:], uint64(len(image)))
	le.PutUint64(ph[40:], uint64(len(image)))
	le.PutUint64(ph[48:], 0x1000)
	out := make([]byte, off)
	copy(out, b)
	return append(out, image...)
}
