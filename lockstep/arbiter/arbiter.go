package arbiter

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// ErrHeldElsewhere is wrapped by an Acquire error that says the epoch
// cannot be granted yet because another host holds the VM under a lease
// that has not run out (lockstep/arbiter/etcd): no fault, the caller asks
// again, and is granted once the lease ends.
var ErrHeldElsewhere = errors.New("another host holds the VM under a live lease")

// Arbiter grants epochs. Implementations must make Acquire atomic across
// every host that can reach them.
type Arbiter interface {
	// Acquire asks for epoch of vmID. granted is false, with a nil error, when
	// an equal or newer epoch was already granted: the caller lost and must
	// stop acting as primary. err is for "could not ask" (retry later).
	Acquire(ctx context.Context, vmID string, epoch uint64) (granted bool, fence uint64, err error)
}

// Memory is an Arbiter held in memory. It is safe for concurrent use.
type Memory struct {
	mu    sync.Mutex
	epoch map[string]uint64 // mu must be held
	fence uint64            // last fence handed out; mu must be held
	// Grants records every grant in order, for checkers to read.
	grants []Grant // mu must be held
}

// Grant is one successful Acquire.
type Grant struct {
	VMID  string
	Epoch uint64
	Fence uint64
}

var _ Arbiter = (*Memory)(nil)

// NewMemory returns an arbiter that has granted nothing.
func NewMemory() *Memory { return &Memory{epoch: map[string]uint64{}} }

// Acquire implements Arbiter.
func (m *Memory) Acquire(ctx context.Context, vmID string, epoch uint64) (bool, uint64, error) {
	if err := ctx.Err(); err != nil {
		return false, 0, err
	}
	if epoch == 0 {
		return false, 0, fmt.Errorf("arbiter: epoch 0 is reserved for \"no epoch yet\"; ask for epoch 1 or later")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if epoch <= m.epoch[vmID] {
		return false, 0, nil
	}
	m.epoch[vmID] = epoch
	m.fence++
	m.grants = append(m.grants, Grant{VMID: vmID, Epoch: epoch, Fence: m.fence})
	return true, m.fence, nil
}

// Grants returns a copy of every grant so far, oldest first.
func (m *Memory) Grants() []Grant {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Grant(nil), m.grants...)
}
