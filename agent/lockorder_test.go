package agent

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockOrderChecker records, per goroutine, the agent locks it holds, and
// fails on a Lock that waits while the goroutine holds a lock of the same
// or a higher rank (readyMu ranks below mu: see lockorder.go). It also
// notes which paths took both locks, so that a test can say it exercised
// them all.
type lockOrderChecker struct {
	mu         sync.Mutex
	held       map[int64][]lockRank
	violations []string
	paths      map[string]int
}

// watchLockOrder makes every agent's locks report to a new checker until
// the test ends.
func watchLockOrder(t *testing.T) *lockOrderChecker {
	c := &lockOrderChecker{held: map[int64][]lockRank{}, paths: map[string]int{}}
	lockWatch.Store(&lockWatcher{lock: c.lock, unlock: c.unlock})
	t.Cleanup(func() { lockWatch.Store(nil) })
	return c
}

func goroutineID() int64 {
	var b [64]byte
	s := bytes.TrimPrefix(b[:runtime.Stack(b[:], false)], []byte("goroutine "))
	id, err := strconv.ParseInt(string(s[:bytes.IndexByte(s, ' ')]), 10, 64)
	if err != nil {
		panic(err)
	}
	return id
}

// bothLockPaths are the functions on a stack that name a path taking both
// locks; a stack is labelled with every one on it.
var bothLockPaths = []string{"process", "onExit", "HandleFrame", "restore", "arbiterAnswered", "flushInlineOn"}

func callers() []string {
	pcs := make([]uintptr, 64)
	frames := runtime.CallersFrames(pcs[:runtime.Callers(4, pcs)])
	var fns []string
	for {
		f, more := frames.Next()
		if i := strings.LastIndexByte(f.Function, '.'); i >= 0 && strings.Contains(f.Function, "ftvm/agent.") {
			fns = append(fns, f.Function[i+1:])
		}
		if !more {
			return fns
		}
	}
}

func (c *lockOrderChecker) lock(r lockRank, wait bool) {
	g := goroutineID()
	c.mu.Lock()
	held := c.held[g]
	c.held[g] = append(held, r)
	c.mu.Unlock()
	if len(held) == 0 {
		return
	}
	fns := callers()
	c.mu.Lock()
	defer c.mu.Unlock()
	if wait && slices.ContainsFunc(held, func(h lockRank) bool { return h >= r }) {
		c.violations = append(c.violations, fmt.Sprintf("waited for %s holding %v, in %s", r, held, strings.Join(fns, " ← ")))
	}
	var labels []string
	for _, p := range bothLockPaths {
		if slices.Contains(fns, p) {
			labels = append(labels, p)
		}
	}
	c.paths[strings.Join(labels, "+")]++
}

func (c *lockOrderChecker) unlock(r lockRank) {
	g := goroutineID()
	c.mu.Lock()
	defer c.mu.Unlock()
	held := c.held[g]
	i := slices.Index(held, r)
	if i < 0 {
		c.violations = append(c.violations, fmt.Sprintf("unlocked %s, which this goroutine does not hold (%v)", r, held))
		return
	}
	held = slices.Delete(held, i, i+1)
	if len(held) == 0 {
		delete(c.held, g)
	} else {
		c.held[g] = held
	}
}

func (c *lockOrderChecker) report() (violations []string, paths map[string]int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.violations), maps.Clone(c.paths)
}

// seen reports whether a path labelled with every one of names took both
// locks.
func seen(paths map[string]int, names ...string) bool {
	for k := range paths {
		labels := strings.Split(k, "+")
		if !slices.ContainsFunc(names, func(n string) bool { return !slices.Contains(labels, n) }) {
			return true
		}
	}
	return false
}

// Issue 17: the lock order doc.go states (readyMu, then mu; with mu held
// readyMu only by TryLock) is the order the code follows, on every path
// that takes both: the loop performing a Ready, an inline flush from the
// vCPU hook and from a transport reader, a restore, and an arbiter grant
// that takes the secondary live, all running at once in a script pair
// that resyncs after a divergence and then fails over.
func TestLockOrderOnEveryPathThatTakesBoth(t *testing.T) {
	c := watchLockOrder(t)
	const lines, glitch = 3000, 40
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := startScriptPairWith(t, ctx, lines, scriptOpts{glitchLine: glitch})
	p.failOverWhen(t, func() (bool, string) {
		return p.sec.Stats().Restores >= 2 && len(p.priOut.lineList()) >= 2*glitch,
			fmt.Sprintf("no resync after %d lines: secondary %+v", len(p.priOut.lineList()), p.sec.Stats())
	})
	if len(p.secOut.lineList()) == 0 {
		t.Fatal("the secondary never went live")
	}
	violations, paths := c.report()
	for _, v := range violations {
		t.Error(v)
	}
	t.Logf("paths that took both locks (labels: count): %v", paths)
	for _, want := range [][]string{
		{"process"},                      // the loop performing a Ready
		{"onExit", "flushInlineOn"},      // an inline flush from the vCPU hook
		{"HandleFrame", "flushInlineOn"}, // an inline flush from a transport reader
		{"process", "restore"},           // a restore (a command the loop performs)
		{"arbiterAnswered"},              // the grant that takes the secondary live
	} {
		if !seen(paths, want...) {
			t.Errorf("no path through %v took both locks: the test did not exercise it", want)
		}
	}
}

// The planted inversion: an inline flush that waits for readyMu while it
// holds mu (instead of TryLock) can deadlock against the loop, which holds
// readyMu and waits for mu. The checker must catch it on the first try,
// with no deadlock needed.
func TestLockOrderCatchesPlantedInversion(t *testing.T) {
	for _, bug := range []bool{false, true} {
		c := watchLockOrder(t)
		a := newUnitAgent(t, &opLog{})
		a.bugWaitForReadyMu = bug
		a.started.Store(true)
		a.mu.Lock()
		a.flushInline() // as a transport reader does after a Step
		a.mu.Unlock()
		violations, _ := c.report()
		if bug && len(violations) == 0 {
			t.Fatal("an inline flush that waits for readyMu holding mu passed the lock-order check")
		}
		if !bug && len(violations) != 0 {
			t.Fatalf("the inline flush as written: %v", violations)
		}
		if bug {
			t.Logf("caught: %s", violations[0])
		}
	}
}
