package agent

import (
	"strings"
	"testing"
	"time"
)

// The lock-hold profile names the function that took a lock and times
// its hold and a wait behind it.
func TestLockHoldProfileNamesTheHolder(t *testing.T) {
	p := &lockHoldProfile{sites: map[holdKey]*holdSite{}}
	holdProf.Store(p)
	t.Cleanup(func() { holdProf.Store(nil) })
	m := rankedMutex{rank: rankMu}
	holdForAWhile(&m)
	got := make(chan struct{})
	m.Lock()
	go func() { m.Lock(); m.Unlock(); close(got) }()
	time.Sleep(2 * time.Millisecond)
	m.Unlock()
	<-got
	r := p.report()
	line := ""
	for _, l := range strings.Split(r, "\n") {
		if strings.Contains(l, "holdForAWhile") {
			line = l
		}
	}
	if line == "" || !strings.HasPrefix(line, "mu ") {
		t.Fatalf("no line for holdForAWhile's hold of mu in\n%s", r)
	}
	s := p.sites[holdKey{rankMu, "agent.holdForAWhile"}]
	if s == nil || s.hold.TotalCount() != 1 || s.hold.Max() < int64(time.Millisecond) {
		t.Fatalf("holdForAWhile's hold of at least 1 ms not recorded:\n%s", r)
	}
	w := p.sites[holdKey{rankMu, "agent.TestLockHoldProfileNamesTheHolder.func2"}]
	if w == nil || w.wait.Max() < int64(time.Millisecond) || w.handoff.TotalCount() != 1 {
		t.Fatalf("the waiter's wait of at least 1 ms and its handoff not recorded:\n%s", r)
	}
}

func holdForAWhile(m *rankedMutex) {
	m.Lock()
	time.Sleep(time.Millisecond)
	m.Unlock()
}
