package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"
	"time"

	"github.com/ftvm/ftvm/internal/testutil"
	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/wire"
	"github.com/ftvm/ftvm/vmm"
)

// A guest written in machine code here (no compiler needed) that makes the
// largest legal request of every device once: a block write and a block
// read of vmm.BlockMaxBytes, console writes of vmm.ConsoleMaxBytes, an
// entropy read of vmm.EntropyMaxBytes, a NIC TX of vmm.NICFrameMaxBytes
// and a NIC RX offering the largest buffer. Layout from vmm.LoadBase:
// code, request structs (64 bytes apart), then the buffers.
const (
	maxioCodeOff  = 0
	maxioReqOff   = 0x1000
	maxioWriteOff = 0x2000
	maxioReadOff  = maxioWriteOff + vmm.BlockMaxBytes
	maxioEntOff   = maxioReadOff + vmm.BlockMaxBytes
	maxioSize     = maxioEntOff + vmm.EntropyMaxBytes
	maxioSector   = 8
	maxioDiskSize = 1 << 20
)

// maxioPattern is what the guest writes to its disk.
func maxioPattern() []byte {
	b := make([]byte, vmm.BlockMaxBytes)
	for i := range b {
		b[i] = byte(i*7 + i>>9)
	}
	return b
}

func maxioImage() []byte {
	img := make([]byte, maxioSize)
	copy(img[maxioWriteOff:], maxioPattern())
	var code []byte
	slot := 0
	req := func(port uint16, op uint32, bufOff uint64, n uint32, arg uint64) {
		at := maxioReqOff + slot*64
		slot++
		r := img[at : at+40]
		binary.LittleEndian.PutUint32(r[0:], op)
		binary.LittleEndian.PutUint64(r[8:], vmm.LoadBase+bufOff)
		binary.LittleEndian.PutUint32(r[16:], n)
		binary.LittleEndian.PutUint64(r[24:], arg)
		// movl $req,%eax; movl $doorbell,%edx; movl %eax,(%rdx)
		code = append(code, 0xb8)
		code = binary.LittleEndian.AppendUint32(code, uint32(vmm.LoadBase)+uint32(at))
		code = append(code, 0xba)
		code = binary.LittleEndian.AppendUint32(code, uint32(vmm.DoorbellBase)+uint32(port))
		code = append(code, 0x89, 0x02)
	}
	req(vmm.PortBlock, vmm.OpBlockWrite, maxioWriteOff, vmm.BlockMaxBytes, maxioSector)
	req(vmm.PortBlock, vmm.OpBlockRead, maxioReadOff, vmm.BlockMaxBytes, maxioSector)
	// The first and the last console-full of what the read returned.
	req(vmm.PortConsole, vmm.OpConsoleWrite, maxioReadOff, vmm.ConsoleMaxBytes, 0)
	req(vmm.PortConsole, vmm.OpConsoleWrite, maxioReadOff+vmm.BlockMaxBytes-vmm.ConsoleMaxBytes, vmm.ConsoleMaxBytes, 0)
	req(vmm.PortEntropy, vmm.OpEntropyRead, maxioEntOff, vmm.EntropyMaxBytes, 0)
	// The entropy back out, so that the secondary's copy of it is compared.
	req(vmm.PortConsole, vmm.OpConsoleWrite, maxioEntOff, vmm.ConsoleMaxBytes, 0)
	req(vmm.PortNIC, vmm.OpNICTX, maxioWriteOff, vmm.NICFrameMaxBytes, 0)
	req(vmm.PortNIC, vmm.OpNICRX, maxioReadOff, vmm.BlockMaxBytes, 0)
	req(vmm.PortHalt, vmm.OpHaltExit, 0, 0, 0)
	copy(img[maxioCodeOff:], code)
	return elfOf(img)
}

// elfOf wraps an image as a static ELF executable loaded and entered at
// vmm.LoadBase: one RWX PT_LOAD segment at file offset 0x1000.
func elfOf(image []byte) []byte {
	const ehsize, phsize, off = 64, 56, 0x1000
	le := binary.LittleEndian
	b := make([]byte, off)
	copy(b, "\x7fELF")
	b[4], b[5], b[6] = 2, 1, 1 // ELFCLASS64, little-endian, version 1
	le.PutUint16(b[16:], 2)    // ET_EXEC
	le.PutUint16(b[18:], 62)   // EM_X86_64
	le.PutUint32(b[20:], 1)
	le.PutUint64(b[24:], vmm.LoadBase)
	le.PutUint64(b[32:], ehsize)
	le.PutUint16(b[52:], ehsize)
	le.PutUint16(b[54:], phsize)
	le.PutUint16(b[56:], 1)
	ph := b[ehsize:]
	le.PutUint32(ph[0:], 1) // PT_LOAD
	le.PutUint32(ph[4:], 7) // RWX
	le.PutUint64(ph[8:], off)
	le.PutUint64(ph[16:], vmm.LoadBase)
	le.PutUint64(ph[24:], vmm.LoadBase)
	le.PutUint64(ph[32:], uint64(len(image)))
	le.PutUint64(ph[40:], uint64(len(image)))
	le.PutUint64(ph[48:], 0x1000)
	return append(b, image...)
}

// TestKVMPairLargestRequests runs the largest legal request of every
// device through a primary and a secondary: each must fit the log, reach
// the secondary and be reproduced there; none may fail the VM. (The wire's
// bounds were once exactly the devices' limits, without the agent's
// headers: a 64 KiB block write killed the primary.)
func TestKVMPairLargestRequests(t *testing.T) {
	testutil.Require(t, testutil.KVM)
	image := maxioImage()
	pattern := maxioPattern()
	for _, mode := range []lockstep.Mode{lockstep.AckOnCompare, lockstep.AckOnReceipt} {
		t.Run(mode.String(), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), testRunTimeout)
			defer cancel()
			disks := pairDisks(t, maxioDiskSize, nil)
			p := startPairWith(t, ctx, mode, 0, image, "", func(r wire.Role, c *vmm.Config) { c.Disk = disks[r] })
			if err := waitErr(t, "primary", p.priErr); err != nil {
				t.Fatalf("primary: %v", err)
			}
			out := p.priOut.String()
			if len(out) != 3*vmm.ConsoleMaxBytes {
				t.Fatalf("primary released %d console bytes, want %d", len(out), 3*vmm.ConsoleMaxBytes)
			}
			want := append(append([]byte(nil), pattern[:vmm.ConsoleMaxBytes]...), pattern[len(pattern)-vmm.ConsoleMaxBytes:]...)
			if !bytes.Equal([]byte(out[:2*vmm.ConsoleMaxBytes]), want) {
				t.Fatal("the 64 KiB block read did not return the 64 KiB block write")
			}
			got := make([]byte, len(pattern))
			if _, err := disks[wire.RolePrimary].ReadAt(got, maxioSector*vmm.BlockSectorBytes); err != nil || !bytes.Equal(got, pattern) {
				t.Fatalf("the primary's disk does not hold the 64 KiB write (%v)", err)
			}
			// The secondary reproduces every console write (in compare
			// mode before each was released; in receipt mode it may
			// finish after the primary).
			waitFor(t, func() bool {
				p.mu.Lock()
				defer p.mu.Unlock()
				return len(p.replayed) >= 3
			})
			replayed, released := p.stopSecondary(t)
			if !bytes.Equal(replayed, released) || len(released) != len(out) {
				t.Fatalf("secondary reproduced %d console bytes, primary released %d (console %d); they differ", len(replayed), len(released), len(out))
			}
			if v := p.violations(); len(v) > 0 {
				t.Fatalf("%d releases broke %s, first: %s", len(v), mode, v[0])
			}
			if d := p.sec.Stats().Divergences; d != 0 {
				t.Fatalf("the secondary diverged %d times replaying the largest requests", d)
			}
		})
	}
}

// waitFor polls cond until it holds, failing the test after half of
// testRunTimeout.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testRunTimeout / 2)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", testRunTimeout/2)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
