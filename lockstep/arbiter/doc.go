// Package arbiter decides which host may act as primary for a VM in an
// epoch: the atomic test-and-set that prevents split brain.
//
// Acquire(ctx, vmID, epoch) grants the epoch to the first caller that asks
// for it, and only if it is newer than every epoch granted before for that
// VM; the grant carries a fence token that grows with every grant, so a
// holder of an older token can be refused by anyone who has seen a newer one.
//
// Memory is the in-process implementation the simulator uses. File is the
// default for real hosts that share a file system: one state file per VM
// under an fcntl open-file-description lock, its layout documented on File.
// File also records which host holds the newest epoch and whether it
// stopped cleanly (Release), so that a cleanly stopped primary may take the
// next epoch by itself, and an operator may Reset the record once no
// daemon of the VM runs (each holds a lock on <vmID>.running: Running).
// An etcd lease will implement the same interface for hosts that share
// nothing but a network.
package arbiter
