package agent

import "fmt"

// Lease is the lease an arbiter's grants hold under (lockstep/arbiter/etcd):
// a primary may release outputs only while it lives. Config.Lease.
type Lease interface {
	// Check returns nil while this host may release: it holds no lease,
	// or a live one. Once a lease it held is lost it returns an error
	// from then on. It is called for every output, at the moment the
	// output is performed, on any goroutine: it must be cheap.
	Check() error
	// Lost is closed when Check starts failing.
	Lost() <-chan struct{}
}

// leaseLost is the channel Run waits on for the lease's loss (nil, never
// ready, without a Lease).
func (a *Agent) leaseLost() <-chan struct{} {
	if a.cfg.Lease == nil {
		return nil
	}
	return a.cfg.Lease.Lost()
}

// leaseHalt is Run's error once the lease is lost.
func (a *Agent) leaseHalt() error {
	return fmt.Errorf("%w: %v; nothing was released after the lease ran out by this host's count, and another host may take the VM once etcd lets the lease go", ErrHalted, a.cfg.Lease.Check())
}
