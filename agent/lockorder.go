package agent

import (
	"sync"
	"sync/atomic"
	"time"
)

// The agent's two locks have ranks: a goroutine may wait for a lock only
// while it holds none of the same or a higher rank. readyMu ranks below
// mu, so the order is readyMu, then mu; a goroutine that holds mu may
// only TryLock readyMu (flushInline), which cannot wait. doc.go says why.
type lockRank uint8

const (
	rankReadyMu lockRank = 1 + iota
	rankMu
)

func (r lockRank) String() string {
	switch r {
	case rankReadyMu:
		return "readyMu"
	case rankMu:
		return "mu"
	}
	return "unranked"
}

// rankedMutex is a sync.Mutex with a rank, whose every Lock, TryLock and
// Unlock a lock-order checker can watch (lockWatch, set only by the tests
// in lockorder_test.go; unset, a watch costs one atomic load).
type rankedMutex struct {
	m    sync.Mutex
	rank lockRank
	// Set with m held while the lock-hold profile is on (lockhold.go):
	// when and where the holder took it.
	since time.Time
	site  string
	freed time.Time // the last Unlock
}

// lockWatcher sees the agent's lock operations as they happen.
type lockWatcher struct {
	// lock runs before a Lock waits (wait) or after a TryLock succeeded.
	lock func(r lockRank, wait bool)
	// unlock runs before an Unlock.
	unlock func(r lockRank)
}

var lockWatch atomic.Pointer[lockWatcher]

func (m *rankedMutex) Lock() {
	if w := lockWatch.Load(); w != nil {
		w.lock(m.rank, true)
	}
	if p := holdProf.Load(); p != nil {
		site, t0 := lockSite(), time.Now()
		m.m.Lock()
		m.since, m.site = time.Now(), site
		from := m.freed
		if from.Before(t0) {
			from = t0
		}
		p.recordWait(holdKey{m.rank, site}, m.since.Sub(t0), m.since.Sub(from))
		return
	}
	m.m.Lock()
}

func (m *rankedMutex) TryLock() bool {
	if !m.m.TryLock() {
		return false
	}
	if w := lockWatch.Load(); w != nil {
		w.lock(m.rank, false)
	}
	if p := holdProf.Load(); p != nil {
		m.since, m.site = time.Now(), lockSite()
	}
	return true
}

func (m *rankedMutex) Unlock() {
	if w := lockWatch.Load(); w != nil {
		w.unlock(m.rank)
	}
	if p := holdProf.Load(); p != nil && !m.since.IsZero() {
		p.recordHold(holdKey{m.rank, m.site}, time.Since(m.since))
		m.since = time.Time{}
		m.freed = time.Now()
	}
	m.m.Unlock()
}
