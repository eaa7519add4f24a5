package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// LockHoldEnv names a directory: set in a daemon's environment, the
// agent times every hold of, and every wait for, its two locks by the
// function that took them, and rewrites lockhold-<pid>.txt there every
// second with each site's percentiles (a debugging instrument: it costs
// a stack walk per Lock; unset, one atomic load). It is how a long
// holder is found: the reader that waits for mu shows in the waits, the
// site that keeps it in the holds.
const LockHoldEnv = "FTVM_LOCK_HOLD"

// holdProf is the lock-hold profile when LockHoldEnv is set (nil: off).
var holdProf atomic.Pointer[lockHoldProfile]

var holdProfOnce sync.Once

// startLockHoldProfile turns the profile on when LockHoldEnv says so.
func startLockHoldProfile() {
	holdProfOnce.Do(func() {
		dir := os.Getenv(LockHoldEnv)
		if dir == "" {
			return
		}
		p := &lockHoldProfile{sites: map[holdKey]*holdSite{}}
		holdProf.Store(p)
		path := filepath.Join(dir, fmt.Sprintf("lockhold-%d.txt", os.Getpid()))
		go func() {
			for range time.Tick(time.Second) {
				_ = os.WriteFile(path, []byte(p.report()), 0o644)
			}
		}()
	})
}

type holdKey struct {
	rank lockRank
	site string
}

type holdSite struct {
	hold, wait, handoff *hdrhistogram.Histogram
}

// lockHoldProfile is the histograms per lock and site; its mutex is a
// leaf.
type lockHoldProfile struct {
	mu    sync.Mutex
	sites map[holdKey]*holdSite
}

func (p *lockHoldProfile) site(k holdKey) *holdSite {
	s := p.sites[k]
	if s == nil {
		s = &holdSite{hold: hdrhistogram.New(100, 60e9, 2), wait: hdrhistogram.New(100, 60e9, 2), handoff: hdrhistogram.New(100, 60e9, 2)}
		p.sites[k] = s
	}
	return s
}

// recordWait records a wait for the lock, and for a wait of more than
// handoffMin the time from the lock's last Unlock to this acquisition
// (from the wait's start if that was later): a long one says the waiter
// was woken and then waited for its goroutine to run (Go's scheduler or
// a CPU), not behind a holder.
func (p *lockHoldProfile) recordWait(k holdKey, d, handoff time.Duration) {
	p.mu.Lock()
	s := p.site(k)
	_ = s.wait.RecordValue(min(max(d.Nanoseconds(), 100), 60e9))
	if d > handoffMin {
		_ = s.handoff.RecordValue(min(max(handoff.Nanoseconds(), 100), 60e9))
	}
	p.mu.Unlock()
}

const handoffMin = 50 * time.Microsecond

func (p *lockHoldProfile) recordHold(k holdKey, d time.Duration) {
	p.mu.Lock()
	_ = p.site(k).hold.RecordValue(min(max(d.Nanoseconds(), 100), 60e9))
	p.mu.Unlock()
}

// report is the table, longest hold p99 first.
func (p *lockHoldProfile) report() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	keys := make([]holdKey, 0, len(p.sites))
	for k := range p.sites {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(x, y holdKey) int {
		return int(p.sites[y].hold.ValueAtQuantile(99) - p.sites[x].hold.ValueAtQuantile(99))
	})
	var b strings.Builder
	us := func(h *hdrhistogram.Histogram, q float64) float64 { return float64(h.ValueAtQuantile(q)) / 1e3 }
	fmt.Fprintf(&b, "%-8s %-44s %9s %8s %8s %9s %9s | %9s %8s %8s %9s %9s | %8s %8s %9s %9s (µs; handoff: last unlock to this acquisition, waits over %v)\n",
		"lock", "taken by", "holds", "p50", "p90", "p99", "max", "waits", "p50", "p90", "p99", "max", "handoffs", "p50", "p99", "max", handoffMin)
	for _, k := range keys {
		s := p.sites[k]
		fmt.Fprintf(&b, "%-8s %-44s %9d %8.0f %8.0f %9.0f %9.0f | %9d %8.0f %8.0f %9.0f %9.0f | %8d %8.0f %9.0f %9.0f\n", k.rank, k.site,
			s.hold.TotalCount(), us(s.hold, 50), us(s.hold, 90), us(s.hold, 99), float64(s.hold.Max())/1e3,
			s.wait.TotalCount(), us(s.wait, 50), us(s.wait, 90), us(s.wait, 99), float64(s.wait.Max())/1e3,
			s.handoff.TotalCount(), us(s.handoff, 50), us(s.handoff, 99), float64(s.handoff.Max())/1e3)
	}
	return b.String()
}

// lockSite names the agent function that called Lock (through
// sync.Cond and rankedMutex's own methods).
func lockSite() string {
	var pcs [8]uintptr
	n := runtime.Callers(3, pcs[:])
	frames := runtime.CallersFrames(pcs[:n])
	for {
		f, more := frames.Next()
		name := f.Function
		if i := strings.LastIndex(name, "/"); i >= 0 {
			name = name[i+1:]
		}
		if !strings.HasPrefix(name, "sync.") && !strings.Contains(name, "rankedMutex") {
			return name
		}
		if !more {
			return name
		}
	}
}
