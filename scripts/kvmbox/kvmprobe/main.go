package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftvm/ftvm/vmm/kvm"
)

// The KVM ABI (structs, ioctls, exit reasons, kvm_run offsets) and the
// long-mode constants come from package vmm/kvm, which the VMM is built on,
// so the probe checks the very wrappers and layouts the VMM uses. What is
// kvmprobe's own is what the VMM never does: a real-mode guest, port I/O,
// the IOPL=3 information check, and a probe guest with its own layout
// (longmode.go).

// caps are the capabilities reported; none is required here (the VMM
// refuses to start without the ones it needs, with its own message).
var caps = []struct {
	name string
	nr   uintptr
}{
	{"KVM_CAP_XSAVE", kvm.CapXsave},
	{"KVM_CAP_XCRS", kvm.CapXcrs},
	{"KVM_CAP_IMMEDIATE_EXIT", kvm.CapImmediateExit},
	{"KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2", kvm.CapManualDirtyLogProtect2},
	{"KVM_CAP_DIRTY_LOG_RING", kvm.CapDirtyLogRing},
}

// guestMemBytes is the size of each probe VM's single memory slot: two
// 2 MiB pages, so the long-mode guest can touch a second identity-mapped
// page.
const guestMemBytes = 4 << 20

// serialPort is the COM1 data port the real-mode guest writes to.
const serialPort = 0x3f8

func main() {
	exits := flag.Int("exits", 1000, "number of exits to time in each timing loop (real-mode port I/O, CPL3 doorbell)")
	loopIters := flag.Int("loop", 10_000_000, "iterations of the CPL3 compute loop to time (0 skips it)")
	flag.Parse()
	if *exits < 1 {
		fmt.Fprintln(os.Stderr, "kvmprobe: -exits must be at least 1")
		os.Exit(2)
	}
	if err := probe(*exits, *loopIters); err != nil {
		fmt.Printf("kvmprobe: FAIL: %v\n", err)
		os.Exit(1)
	}
	fmt.Println("kvmprobe: PASS")
}

func probe(nExits, loopIters int) error {
	sys, err := kvm.Open() // refuses any API version but kvm.APIVersion
	if err != nil {
		return err
	}
	defer sys.Close()
	fmt.Printf("kvmprobe: ok KVM_GET_API_VERSION = %d\n", kvm.APIVersion)

	vm, err := newVM(sys)
	if err != nil {
		return err
	}
	defer vm.close()
	for _, c := range caps {
		onSys, errSys := sys.CheckExtensionErr(c.nr)
		onVM, errVM := vm.vm.CheckExtension(c.nr)
		if errSys != nil || errVM != nil {
			return fmt.Errorf("KVM_CHECK_EXTENSION(%s): system %v, vm %v", c.name, errSys, errVM)
		}
		state := "present"
		if onSys == 0 && onVM == 0 {
			state = "ABSENT"
		}
		fmt.Printf("kvmprobe: cap %-34s %s (system %d, vm %d)\n", c.name, state, onSys, onVM)
	}

	if err := realModeOut(vm, realCode); err != nil {
		return fmt.Errorf("real-mode guest: %w", err)
	}
	fmt.Println("kvmprobe: ok real-mode guest: KVM_EXIT_IO port 0x3f8 data 'K', then KVM_EXIT_HLT")
	perExit, err := timeRealModeExits(vm, nExits)
	if err != nil {
		return fmt.Errorf("real-mode exit loop: %w", err)
	}
	fmt.Printf("kvmprobe: ok real-mode port-I/O exits: %d exits, mean %.1f µs/exit\n", nExits, us(perExit))

	lm, err := newVM(sys)
	if err != nil {
		return err
	}
	defer lm.close()
	guestCS, err := longModeCPL3(sys, lm, lmCode, 3)
	if err != nil {
		return fmt.Errorf("long-mode CPL3 guest: %w", err)
	}
	fmt.Println("kvmprobe: ok long-mode CPL3 guest (IOPL=0): doorbell stores exit as KVM_EXIT_MMIO (address, 4 bytes, write, value), CS.DPL=3, guest-read CS.RPL=3, user write to 2 MiB page 1 landed, hlt at CPL3 faulted (KVM_EXIT_SHUTDOWN)")
	if guestCS != selUserCode {
		fmt.Printf("kvmprobe: info the CPL3 guest reads CS=%#x, not the %#x it was started with: this KVM runs CPL3 code on a code segment of its own (PVM: the host's user CS), so only the RPL is checked\n",
			guestCS, selUserCode)
	}
	fmt.Printf("kvmprobe: ok KVM_GET_DIRTY_LOG: the guest's write marked page %#x dirty, and not page %#x\n", lmDataPage, lmUntouched)
	if err := outFaultsAtCPL3(lm, lmOut, 3); err != nil {
		return fmt.Errorf("long-mode CPL3 guest: %w", err)
	}
	fmt.Println("kvmprobe: ok long-mode CPL3 OUT with IOPL=0 faulted (KVM_EXIT_SHUTDOWN), not KVM_EXIT_IO")
	perExit, err = timeDoorbellExits(lm, nExits)
	if err != nil {
		return fmt.Errorf("long-mode CPL3 doorbell loop: %w", err)
	}
	fmt.Printf("kvmprobe: ok long-mode CPL3 doorbell (MMIO) exits: %d exits, mean %.1f µs/exit\n", nExits, us(perExit))
	if loopIters > 0 {
		d, err := timeLongModeLoop(lm, loopIters)
		if err != nil {
			return fmt.Errorf("long-mode CPL3 compute loop: %w", err)
		}
		fmt.Printf("kvmprobe: ok long-mode CPL3 compute loop: %d iterations in %.1f ms (%.2f ns/iteration)\n",
			loopIters, float64(d)/1e6, float64(d)/float64(loopIters))
	}

	// Information only: the VMM gives its guests IOPL=0 on every host.
	switch works, err := portIOWithIOPL3(sys, 3); {
	case err != nil:
		fmt.Printf("kvmprobe: info CPL3 port I/O with IOPL=3: could not tell (%v)\n", err)
	case works:
		fmt.Println("kvmprobe: info CPL3 port I/O with IOPL=3: works")
	default:
		fmt.Println("kvmprobe: info CPL3 port I/O with IOPL=3: faults (#GP; PVM does not honour IOPL): the VMM does not use it")
	}
	return nil
}

func us(d time.Duration) float64 { return float64(d) / 1e3 }

type vm struct {
	vm     *kvm.VM
	mem    []byte
	vcpu   *kvm.Vcpu
	run    []byte // vcpu's struct kvm_run
	closed bool
}

func newVM(sys *kvm.System) (*vm, error) {
	kvmVM, err := sys.CreateVM()
	if err != nil {
		return nil, err
	}
	v := &vm{vm: kvmVM}
	// Intel needs a TSS area below 4 GiB for real mode; AMD ignores it.
	if err := v.vm.SetTSSAddr(0xfffbd000); err != nil {
		v.close()
		return nil, err
	}
	v.mem, err = unix.Mmap(-1, 0, guestMemBytes, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		v.close()
		return nil, fmt.Errorf("mmap guest memory: %w", err)
	}
	if err := v.vm.SetUserMemoryRegion(0, 0, 0, v.mem); err != nil {
		v.close()
		return nil, err
	}
	size, err := sys.VcpuMmapSize()
	if err != nil {
		v.close()
		return nil, err
	}
	if v.vcpu, err = v.vm.CreateVcpu(0, size); err != nil {
		v.close()
		return nil, err
	}
	v.run = v.vcpu.RunArea()
	return v, nil
}

func (v *vm) close() {
	if v.closed {
		return
	}
	v.closed = true
	if v.vcpu != nil {
		v.vcpu.Close()
	}
	if v.mem != nil {
		unix.Munmap(v.mem)
	}
	v.vm.Close()
}

// runOnce enters the guest and returns the exit reason.
func (v *vm) runOnce() (uint32, error) {
	for {
		err := v.vcpu.Run()
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("KVM_RUN: %w", err)
		}
		return binary.LittleEndian.Uint32(v.run[kvm.RunExitReasonOff:]), nil
	}
}

type ioExit struct {
	out  bool
	port uint16
	data []byte
}

func (v *vm) ioExit() ioExit {
	size := int(v.run[kvm.RunIOSizeOff])
	count := int(binary.LittleEndian.Uint32(v.run[kvm.RunIOCountOff:]))
	off := int(binary.LittleEndian.Uint64(v.run[kvm.RunIODataOffsetOff:]))
	return ioExit{
		out:  v.run[kvm.RunIODirectionOff] == kvm.IODirOut,
		port: binary.LittleEndian.Uint16(v.run[kvm.RunIOPortOff:]),
		data: v.run[off : off+size*count],
	}
}

// expectOut runs the guest and checks that it exits with an OUT of want to
// port.
func (v *vm) expectOut(port uint16, want byte) error {
	r, err := v.runOnce()
	if err != nil {
		return err
	}
	if r != kvm.ExitIO {
		return v.unexpected(r, fmt.Sprintf("KVM_EXIT_IO (out to port %#x)", port))
	}
	return v.checkOut(port, want)
}

// checkOut checks that the KVM_EXIT_IO in kvm_run is an OUT of the one byte
// want to port.
func (v *vm) checkOut(port uint16, want byte) error {
	io := v.ioExit()
	if !io.out || io.port != port || len(io.data) != 1 || io.data[0] != want {
		return fmt.Errorf("IO exit: out=%v port=%#x data=%x, want out to port %#x of %#x", io.out, io.port, io.data, port, want)
	}
	return nil
}

type mmioExit struct {
	addr  uint64
	data  []byte
	write bool
}

func (v *vm) mmioExit() mmioExit {
	n := min(binary.LittleEndian.Uint32(v.run[kvm.RunMMIOLenOff:]), 8)
	return mmioExit{
		addr:  binary.LittleEndian.Uint64(v.run[kvm.RunMMIOAddrOff:]),
		data:  v.run[kvm.RunMMIODataOff : kvm.RunMMIODataOff+n],
		write: v.run[kvm.RunMMIOWriteOff] != 0,
	}
}

// expectDoorbell runs the guest and checks that it exits with a 32-bit
// store of want to the doorbell of port, as the VMM's guests ring a device.
func (v *vm) expectDoorbell(port uint16, want uint32) error {
	r, err := v.runOnce()
	if err != nil {
		return err
	}
	return v.checkDoorbell(r, port, want)
}

// checkDoorbell checks that exit reason r, with kvm_run, is a 4-byte MMIO
// store of want to lmDoorbellBase+port.
func (v *vm) checkDoorbell(r uint32, port uint16, want uint32) error {
	got, err := v.doorbellValue(r, port)
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("doorbell %#x: the guest stored %#x, want %#x", lmDoorbellBase+uint64(port), got, want)
	}
	return nil
}

// doorbellValue checks that exit reason r, with kvm_run, is a 4-byte MMIO
// store to lmDoorbellBase+port and returns the value stored.
func (v *vm) doorbellValue(r uint32, port uint16) (uint32, error) {
	addr := lmDoorbellBase + uint64(port)
	if r != kvm.ExitMMIO {
		return 0, v.unexpected(r, fmt.Sprintf("KVM_EXIT_MMIO (store to doorbell %#x)", addr))
	}
	m := v.mmioExit()
	if m.addr != addr || !m.write || len(m.data) != 4 {
		return 0, fmt.Errorf("MMIO exit: addr=%#x write=%v len=%d data=%x, want a 4-byte store to doorbell %#x",
			m.addr, m.write, len(m.data), m.data, addr)
	}
	return binary.LittleEndian.Uint32(m.data), nil
}

func (v *vm) unexpected(r uint32, want string) error {
	regs, _ := v.vcpu.GetRegs()
	return fmt.Errorf("exit %s at rip %#x, want %s", kvm.ExitReasonName(r), regs.RIP, want)
}

// The real-mode probe is kvmprobe's own: the VMM never runs real mode,
// but a real-mode OUT is the simplest exit any KVM makes, so it tells a
// host whose KVM works at all from one that cannot enter long mode.
//
// Real-mode code at realCodeAddr:
//
//	mov $0x3f8,%dx; mov $'K',%al; out %al,(%dx); hlt
//
// and at realLoopAddr, a loop of OUTs for timing exits:
//
//	mov $0x3f8,%dx; 1: out %al,(%dx); jmp 1b
const (
	realCodeAddr = 0x1000
	realLoopAddr = 0x1100
)

var (
	realCode = []byte{0xba, 0xf8, 0x03, 0xb0, 'K', 0xee, 0xf4}
	realLoop = []byte{0xba, 0xf8, 0x03, 0xee, 0xeb, 0xfd}
)

func (v *vm) enterRealMode(rip uint64) error {
	s, err := v.vcpu.GetSregs()
	if err != nil {
		return err
	}
	s.CS.Base, s.CS.Selector = 0, 0
	if err := v.vcpu.SetSregs(s); err != nil {
		return err
	}
	return v.vcpu.SetRegs(kvm.Regs{RIP: rip, RFLAGS: kvm.RFLAGSReserved})
}

// realModeOut runs code (realCode, or a planted variant in tests) and checks
// that it writes 'K' to the serial port and halts.
func realModeOut(v *vm, code []byte) error {
	copy(v.mem[realCodeAddr:], code)
	copy(v.mem[realLoopAddr:], realLoop)
	if err := v.enterRealMode(realCodeAddr); err != nil {
		return err
	}
	if err := v.expectOut(serialPort, 'K'); err != nil {
		return err
	}
	r, err := v.runOnce()
	if err != nil {
		return err
	}
	if r != kvm.ExitHLT {
		return v.unexpected(r, "KVM_EXIT_HLT")
	}
	return nil
}

func timeRealModeExits(v *vm, n int) (time.Duration, error) {
	if err := v.enterRealMode(realLoopAddr); err != nil {
		return 0, err
	}
	return v.timeExits(n, func(r uint32, _ int) error {
		if r != kvm.ExitIO || v.ioExit().port != serialPort {
			return v.unexpected(r, fmt.Sprintf("KVM_EXIT_IO to port %#x", serialPort))
		}
		return nil
	})
}

// timeExits runs the guest through one warm-up exit (i = -1) and then n
// timed exits (i = 0..n-1), passing each exit reason to check, and returns
// the mean time per timed exit.
func (v *vm) timeExits(n int, check func(r uint32, i int) error) (time.Duration, error) {
	var start time.Time
	for i := -1; i < n; i++ {
		if i == 0 {
			start = time.Now()
		}
		r, err := v.runOnce()
		if err != nil {
			return 0, err
		}
		if err := check(r, i); err != nil {
			return 0, fmt.Errorf("exit %d of %d (the first is the warm-up): %w", i+2, n+1, err)
		}
	}
	return time.Since(start) / time.Duration(n), nil
}
