// Package arbiter decides which host may act as primary for a VM in an
// epoch: the atomic test-and-set that prevents split brain.
//
// Acquire(ctx, vmID, epoch) grants the epoch to the first caller that asks
// for it, and only if it is newer than every epoch granted before for that
// VM; the grant carries a fence token that grows with every grant, so a
// holder of an older token can be refused by anyone who has seen a newer one.
//
// Memory is the in-process implementation the simulator uses; a file lock and
// an etcd lease will implement the same interface for real deployments.
package arbiter
