package probe

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Roles of threads (enum role in bpf/probe.c).
const (
	roleOther     = 0
	rolePeerOther = 4
)

// refreshInterval is how often the probe looks for the daemons' new
// threads and TAP file descriptors (Go starts threads as it needs them).
const refreshInterval = 500 * time.Millisecond

// Config says what to probe.
type Config struct {
	// PID is the primary ftvm daemon whose outputs are timed.
	PID int
	// PeerPID, when not zero, is its secondary on this same machine (a
	// lab or the demo): its turnaround and run-queue delays are timed too.
	PeerPID int
	// Binary is the daemon's executable; default /proc/PID/exe.
	Binary string
	// skip names hooks not to attach (tracepoint or symbol names), for
	// measuring what each costs.
	skip map[string]bool
}

// Probe is the programs attached to a daemon. Close detaches them.
type Probe struct {
	cfg   Config
	objs  probeObjects
	links []link.Link

	stop chan struct{}
	done chan struct{}
	once sync.Once

	mu         sync.Mutex
	refreshErr error
}

// Attach loads the programs and attaches them to the daemon cfg.PID (and
// its peer). It needs root (CAP_BPF and CAP_PERFMON) and mounts tracefs
// when it is missing. The probe runs until Close.
func Attach(cfg Config) (*Probe, error) {
	if cfg.PID <= 0 {
		return nil, errors.New("probe: no daemon process given")
	}
	if cfg.Binary == "" {
		cfg.Binary = fmt.Sprintf("/proc/%d/exe", cfg.PID)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", cfg.PID)); err != nil {
		return nil, fmt.Errorf("probe: no process %d: %w", cfg.PID, err)
	}
	offs, err := FuncOffsets(cfg.Binary, SymOutputHeld, SymAckReceived, SymOutputReleased)
	if err != nil {
		return nil, err
	}
	if _, err := ensureTracefs(); err != nil {
		return nil, err
	}
	spec, err := loadProbe()
	if err != nil {
		return nil, fmt.Errorf("probe: the compiled programs do not parse: %w", err)
	}
	if err := spec.Variables["target_tgid"].Set(uint32(cfg.PID)); err != nil {
		return nil, fmt.Errorf("probe: %w", err)
	}
	if err := spec.Variables["peer_tgid"].Set(uint32(max(cfg.PeerPID, 0))); err != nil {
		return nil, fmt.Errorf("probe: %w", err)
	}
	p := &Probe{cfg: cfg, stop: make(chan struct{}), done: make(chan struct{})}
	if err := spec.LoadAndAssign(&p.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("probe: the kernel refused the programs: %+v", ve)
		}
		return nil, fmt.Errorf("probe: loading the programs: %w (run as root: BPF needs CAP_BPF and CAP_PERFMON)", err)
	}
	if err := p.refresh(); err != nil {
		p.objs.Close()
		return nil, err
	}
	if err := p.attach(offs); err != nil {
		p.closeLinks()
		p.objs.Close()
		return nil, err
	}
	go p.refreshLoop()
	return p, nil
}

func (p *Probe) attach(offs map[string]uint64) error {
	tps := []struct {
		group, name string
		prog        *ebpf.Program
	}{
		{"kvm", "kvm_userspace_exit", p.objs.KvmExit},
		{"sock", "sock_send_length", p.objs.SockSend},
		{"sock", "sock_recv_length", p.objs.SockRecv},
		{"syscalls", "sys_enter_write", p.objs.TapWrite},
		{"sched", "sched_wakeup", p.objs.SchedWakeup},
		{"sched", "sched_wakeup_new", p.objs.SchedWakeupNew},
		{"sched", "sched_switch", p.objs.SchedSwitch},
	}
	for _, tp := range tps {
		if p.cfg.skip[tp.name] {
			continue
		}
		l, err := link.Tracepoint(tp.group, tp.name, tp.prog, nil)
		if err != nil {
			return fmt.Errorf("probe: attaching to tracepoint %s:%s: %w", tp.group, tp.name, err)
		}
		p.links = append(p.links, l)
	}
	ex, err := link.OpenExecutable(p.cfg.Binary)
	if err != nil {
		return fmt.Errorf("probe: %s: %w", p.cfg.Binary, err)
	}
	ups := []struct {
		sym  string
		prog *ebpf.Program
	}{
		{SymOutputHeld, p.objs.OutputHeld},
		{SymAckReceived, p.objs.AckReceived},
		{SymOutputReleased, p.objs.OutputReleased},
	}
	for _, up := range ups {
		if p.cfg.skip[up.sym] {
			continue
		}
		// At the function's entry only: never a uretprobe on Go code.
		l, err := ex.Uprobe(up.sym, up.prog, &link.UprobeOptions{Address: offs[up.sym], PID: p.cfg.PID})
		if err != nil {
			return fmt.Errorf("probe: attaching a uprobe to %s in %s: %w", up.sym, p.cfg.Binary, err)
		}
		p.links = append(p.links, l)
	}
	return nil
}

// refresh adds the daemons' threads and the TAP's file descriptors the
// kernel side has not seen yet.
func (p *Probe) refresh() error {
	add := func(pid int, role uint32) error {
		tids, err := threadsOf(pid)
		if err != nil {
			return err
		}
		for _, tid := range tids {
			err := p.objs.Threads.Update(tid, probeThread{Role: role}, ebpf.UpdateNoExist)
			if err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
				return fmt.Errorf("probe: adding thread %d: %w", tid, err)
			}
		}
		return nil
	}
	if err := add(p.cfg.PID, roleOther); err != nil {
		return err
	}
	if p.cfg.PeerPID > 0 {
		if err := add(p.cfg.PeerPID, rolePeerOther); err != nil {
			return err
		}
	}
	fds, err := tapFDsOf(p.cfg.PID)
	if err != nil {
		return err
	}
	for _, fd := range fds {
		if err := p.objs.TapFds.Put(fd, uint8(1)); err != nil {
			return fmt.Errorf("probe: adding the TAP's fd %d: %w", fd, err)
		}
	}
	return nil
}

func (p *Probe) refreshLoop() {
	defer close(p.done)
	t := time.NewTicker(refreshInterval)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			err := p.refresh()
			p.mu.Lock()
			p.refreshErr = err
			p.mu.Unlock()
		}
	}
}

// Err is the last error looking for the daemons' threads: set once a
// daemon has exited.
func (p *Probe) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.refreshErr
}

// Snapshot reads the histograms and counters.
func (p *Probe) Snapshot() (*Snapshot, error) {
	s := &Snapshot{Taken: time.Now()}
	for st := Stage(0); st < StageCount; st++ {
		var h probeHistogram
		if err := p.objs.Hist.Lookup(uint32(st), &h); err != nil {
			return nil, fmt.Errorf("probe: reading the histogram of %s: %w", st, err)
		}
		s.Buckets[st] = h.Buckets
		s.Stages[st] = fold(h.Buckets[:])
	}
	for c := Counter(0); c < CounterCount; c++ {
		if err := p.objs.Counters.Lookup(uint32(c), &s.Counters[c]); err != nil {
			return nil, fmt.Errorf("probe: reading counter %s: %w", c.Key(), err)
		}
	}
	return s, nil
}

func (p *Probe) closeLinks() {
	for _, l := range p.links {
		l.Close()
	}
	p.links = nil
}

// Close detaches the programs and frees their maps.
func (p *Probe) Close() error {
	p.once.Do(func() {
		close(p.stop)
		<-p.done
		p.closeLinks()
		p.objs.Close()
	})
	return nil
}
