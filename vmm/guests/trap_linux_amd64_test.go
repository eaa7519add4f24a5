package guests

import (
	"bytes"
	"crypto/rand"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftvm/ftvm/internal/testutil"
)

// The trap harness runs the real freestanding ELF files, not hosted
// builds, as Linux processes under ptrace: Linux loads the segments, the
// harness puts a boot struct in memory and its address in RDI, and every
// doorbell store (to an address no Linux process has mapped, so a SIGSEGV)
// stops the process so the harness can perform the request the way the VMM
// would, then step over the instruction. This executes crt0, the .bss
// clearing, the doorbell encoding and the 32-bit request address exactly as
// they will run in a VM.

// Device ABI numbers, as in include/ftvm.h.
const (
	portConsole = 0x500
	portClock   = 0x501
	portEntropy = 0x502
	portNIC     = 0x503
	portBlock   = 0x504
	portHalt    = 0x505
	bootMagic   = 0x544f4f424d565446
	reqBytes    = 40
	bootBytes   = 32 + 256
	statusRange = -2

	doorbellBase = 0xc0000000 // FTVM_DOORBELL_BASE

	// trapExitsMax bounds a trapped run, so a guest that never halts ends
	// the test instead of hanging it.
	trapExitsMax = 100000
)

type trapVM struct {
	cmdline string
	heap    int // bytes of heap to provide
	magic   uint64
	garbage bool // fill .bss with 0xa5 before the guest starts

	console bytes.Buffer
	disk    []byte
	rx      [][]byte // frames the guest will receive, in order
	tx      [][]byte // frames the guest sent
	mac     [6]byte
	code    int
	exits   int
}

// run executes the ELF at path to its HALT and returns its exit code.
func (vm *trapVM) run(t *testing.T, path string) int {
	t.Helper()
	// ptrace requests must come from the thread that started the tracee.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	// The boot struct and the heap live in a command-line argument: memory
	// Linux maps for the process, at an address found through argv.
	pad := strings.Repeat("x", 3*4096+vm.heap)
	cmd := exec.Command(path, pad)
	cmd.SysProcAttr = &syscall.SysProcAttr{Ptrace: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s under ptrace: %v", path, err)
	}
	pid := cmd.Process.Pid
	defer func() {
		syscall.Kill(pid, syscall.SIGKILL)
		var ws syscall.WaitStatus
		syscall.Wait4(pid, &ws, 0, nil)
	}()
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(pid, &ws, 0, nil); err != nil || !ws.Stopped() {
		t.Fatalf("tracee did not stop after exec: %v %v", err, ws)
	}
	mem, err := os.OpenFile(fmt.Sprintf("/proc/%d/mem", pid), os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("opening tracee memory: %v", err)
	}
	defer mem.Close()

	var regs syscall.PtraceRegs
	if err := syscall.PtraceGetRegs(pid, &regs); err != nil {
		t.Fatal(err)
	}
	word := make([]byte, 8)
	mem.ReadAt(word, int64(regs.Rsp+16)) // argv[1]
	arg := binary.LittleEndian.Uint64(word)
	boot := (arg + 7) &^ 7
	heapStart := (boot + bootBytes + 4095) &^ 4095
	heapEnd := heapStart + uint64(vm.heap)
	b := make([]byte, bootBytes)
	magic := vm.magic
	if magic == 0 {
		magic = bootMagic
	}
	binary.LittleEndian.PutUint64(b[0:], magic)
	binary.LittleEndian.PutUint64(b[8:], heapEnd)
	binary.LittleEndian.PutUint64(b[16:], heapStart)
	binary.LittleEndian.PutUint64(b[24:], heapEnd)
	copy(b[32:], vm.cmdline)
	if _, err := mem.WriteAt(b, int64(boot)); err != nil {
		t.Fatalf("writing the boot struct: %v", err)
	}
	if vm.garbage {
		lo, hi := bssRange(t, path)
		if _, err := mem.WriteAt(bytes.Repeat([]byte{0xa5}, int(hi-lo)), int64(lo)); err != nil {
			t.Fatalf("filling .bss: %v", err)
		}
	}
	regs.Rdi = boot
	if err := syscall.PtraceSetRegs(pid, &regs); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	for vm.exits = 0; vm.exits < trapExitsMax; vm.exits++ {
		if err := syscall.PtraceCont(pid, 0); err != nil {
			t.Fatal(err)
		}
		if _, err := syscall.Wait4(pid, &ws, 0, nil); err != nil {
			t.Fatal(err)
		}
		if !ws.Stopped() {
			t.Fatalf("guest ended without HALT: %v\nconsole:\n%s", ws, vm.console.String())
		}
		if err := syscall.PtraceGetRegs(pid, &regs); err != nil {
			t.Fatal(err)
		}
		// ftvm_doorbell is always movl %eax,(%rdx), to a doorbell.
		op := make([]byte, 2)
		mem.ReadAt(op, int64(regs.Rip))
		if ws.StopSignal() != syscall.SIGSEGV || op[0] != 0x89 || op[1] != 0x02 ||
			regs.Rdx < doorbellBase || regs.Rdx >= doorbellBase+0x10000 {
			t.Fatalf("guest stopped by %v at rip %#x (bytes %x, rdx %#x), not at a doorbell store\nconsole:\n%s",
				ws.StopSignal(), regs.Rip, op, regs.Rdx, vm.console.String())
		}
		port := uint16(regs.Rdx - doorbellBase)
		addr := int64(uint32(regs.Rax)) // the store carries 32 bits
		if halted := vm.request(t, mem, port, addr, start); halted {
			return vm.code
		}
		regs.Rip += 2
		if err := syscall.PtraceSetRegs(pid, &regs); err != nil {
			t.Fatal(err)
		}
	}
	t.Fatalf("guest made %d exits without halting\nconsole:\n%s", trapExitsMax, vm.console.String())
	return 0
}

// request performs one device request and reports whether it was HALT.
func (vm *trapVM) request(t *testing.T, mem *os.File, port uint16, addr int64, start time.Time) bool {
	t.Helper()
	r := make([]byte, reqBytes)
	if _, err := mem.ReadAt(r, addr); err != nil {
		t.Fatalf("exit %d: request address %#x (32 bits of RAX) is not guest memory: %v", vm.exits, addr, err)
	}
	op := binary.LittleEndian.Uint32(r[0:])
	bufAddr := int64(binary.LittleEndian.Uint64(r[8:]))
	n := int(binary.LittleEndian.Uint32(r[16:]))
	arg := binary.LittleEndian.Uint64(r[24:])
	if flags := binary.LittleEndian.Uint32(r[20:]); flags != 0 {
		t.Fatalf("exit %d: port %#x flags %d, must be 0", vm.exits, port, flags)
	}
	read := func(n int) []byte {
		b := make([]byte, n)
		if _, err := mem.ReadAt(b, bufAddr); err != nil {
			t.Fatalf("exit %d: buffer %#x+%d: %v", vm.exits, bufAddr, n, err)
		}
		return b
	}
	write := func(b []byte) {
		if _, err := mem.WriteAt(b, bufAddr); err != nil {
			t.Fatalf("exit %d: buffer %#x+%d: %v", vm.exits, bufAddr, len(b), err)
		}
	}
	var status int32
	var result uint64
	bad := func(why string) { t.Fatalf("exit %d: port %#x op %d len %d: %s", vm.exits, port, op, n, why) }
	switch {
	case port == portConsole && op == 1:
		if n > 4096 {
			bad("console write over 4096 bytes")
		}
		vm.console.Write(read(n))
	case port == portClock && op == 1:
		result = uint64(time.Since(start).Nanoseconds())
	case port == portEntropy && op == 1:
		b := make([]byte, n)
		rand.Read(b)
		write(b)
	case port == portNIC && op == 1:
		if n > 1514 {
			bad("frame over 1514 bytes")
		}
		vm.tx = append(vm.tx, read(n))
	case port == portNIC && op == 2:
		if len(vm.rx) > 0 {
			f := vm.rx[0]
			vm.rx = vm.rx[1:]
			f = f[:min(len(f), n)]
			write(f)
			result = uint64(len(f))
		}
	case port == portNIC && op == 3:
		if len(vm.rx) > 0 {
			result = 1
		}
	case port == portNIC && op == 4:
		write(vm.mac[:])
	case port == portBlock && op == 3:
		result = uint64(len(vm.disk) / 512)
	case port == portBlock && (op == 1 || op == 2):
		if n == 0 || n%512 != 0 || n > 65536 {
			bad("block length must be a multiple of 512 up to 65536")
		}
		off := int(arg) * 512
		if arg > uint64(len(vm.disk)/512) || off+n > len(vm.disk) {
			status = statusRange
			break
		}
		if op == 1 {
			write(vm.disk[off : off+n])
		} else {
			copy(vm.disk[off:], read(n))
		}
	case port == portHalt && op == 1:
		vm.code = int(arg)
		return true
	default:
		bad("no such device request")
	}
	binary.LittleEndian.PutUint32(r[4:], uint32(status))
	binary.LittleEndian.PutUint64(r[32:], result)
	if _, err := mem.WriteAt(r, addr); err != nil {
		t.Fatal(err)
	}
	return false
}

func bssRange(t *testing.T, path string) (lo, hi uint64) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range syms {
		switch s.Name {
		case "__bss_start":
			lo = s.Value
		case "__bss_end":
			hi = s.Value
		}
	}
	if lo == 0 || hi <= lo {
		t.Fatalf("%s: no __bss_start/__bss_end", path)
	}
	return lo, hi
}

func requirePtrace(t *testing.T) {
	t.Helper()
	cmd := exec.Command("/bin/true")
	cmd.SysProcAttr = &syscall.SysProcAttr{Ptrace: true}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := cmd.Start(); err != nil {
		testutil.SkipMissing(t, fmt.Errorf("ptrace is not permitted here (%v); the trap harness needs it", err), testutil.Root)
	}
	syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
	var ws syscall.WaitStatus
	syscall.Wait4(cmd.Process.Pid, &ws, 0, nil)
}

func elfPath(t *testing.T, guest string) string {
	t.Helper()
	requirePtrace(t)
	return filepath.Join(build(t, "all"), guest)
}

// TestTrappedMemstressMatchesHosted runs the freestanding memstress with
// .bss full of garbage and checks that it prints exactly what the hosted
// build prints: the same code, built two ways, agrees.
func TestTrappedMemstressMatchesHosted(t *testing.T) {
	path := elfPath(t, "memstress")
	args := []string{"pages=16", "iters=6", "dirty=8", "pattern=random", "seed=3"}
	vm := &trapVM{cmdline: strings.Join(args, " "), heap: 16 * 4096, garbage: true}
	if code := vm.run(t, path); code != 0 {
		t.Fatalf("exit code %d, console:\n%s", code, vm.console.String())
	}
	hosted, _ := memstress(t, args...)
	if vm.console.String() != hosted {
		t.Fatalf("freestanding console:\n%s\nhosted console:\n%s", vm.console.String(), hosted)
	}
	// iters console writes, two more lines, HALT.
	if vm.exits != 6+2 {
		t.Errorf("%d exits before HALT, want 8: one console write per line", vm.exits)
	}
}

func TestTrappedKVStore(t *testing.T) {
	path := elfPath(t, "kvstore")
	vm := &trapVM{
		cmdline: "maxreq=3",
		disk:    make([]byte, 16*512),
		mac:     guestMAC,
		garbage: true,
		rx: [][]byte{
			arpPacket{EthSrc: clientMAC, EthDst: mac{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, Op: arpRequest, SHA: clientMAC, SPA: clientIP, TPA: guestIP}.frame(),
			packet("1 PUT a hello").frame(),
			packet("2 INC n").frame(),
			packet("3 GET a").frame(),
		},
	}
	if code := vm.run(t, path); code != 0 {
		t.Fatalf("exit code %d, console:\n%s", code, vm.console.String())
	}
	if !strings.Contains(vm.console.String(), "mac=02:42:ac:11:00:07 wal_replayed=0") {
		t.Errorf("boot line missing or wrong:\n%s", vm.console.String())
	}
	if len(vm.tx) != 4 {
		t.Fatalf("sent %d frames, want 4 (ARP reply, 3 answers)", len(vm.tx))
	}
	if a, err := parseARP(vm.tx[0]); err != nil || a.Op != arpReply || a.SHA != guestMAC {
		t.Errorf("first frame is not our ARP reply: %+v %v", a, err)
	}
	for i, want := range []string{"1 OK 1\n", "2 VAL 1\n", "3 VAL 1 hello\n"} {
		p, err := parseUDP(vm.tx[i+1])
		if err != nil || string(p.Payload) != want {
			t.Errorf("answer %d: %q (%v), want %q", i+1, p.Payload, err, want)
		}
	}
	_, recs := parseWAL(t, vm.disk)
	if len(recs) != 2 || recs[0].key != "a" || recs[1].key != "n" {
		t.Errorf("log records %+v, want a and n", recs)
	}
}

func TestTrappedBadBootStruct(t *testing.T) {
	path := elfPath(t, "nondet")
	vm := &trapVM{magic: 0x1234}
	if code := vm.run(t, path); code != 3 {
		t.Fatalf("exit code %d with a wrong boot magic, want 3; console:\n%s", code, vm.console.String())
	}
	if !strings.Contains(vm.console.String(), "does not point at an ftvm boot struct") {
		t.Errorf("console does not say what is wrong:\n%s", vm.console.String())
	}
}

func TestTrappedNondet(t *testing.T) {
	path := elfPath(t, "nondet")
	outs := make([]string, 2)
	for i := range outs {
		vm := &trapVM{cmdline: "count=2"}
		if code := vm.run(t, path); code != 0 {
			t.Fatalf("exit code %d, console:\n%s", code, vm.console.String())
		}
		outs[i] = vm.console.String()
	}
	if outs[0] == outs[1] || strings.Count(outs[0], " tsc=") != 2 {
		t.Fatalf("two freestanding runs:\n%s\n%s\nwant two different consoles of two values each", outs[0], outs[1])
	}
}
