// Package arbiter decides which host may act as primary for a VM in an
// epoch: the atomic test-and-set that prevents split brain.
//
// Acquire(ctx, vmID, epoch) (granted bool, fence uint64, err error) grants
// the epoch to the first caller that asks for it, and only if it is newer
// than every epoch granted before for that VM; the grant carries a fence
// token that grows with every grant, so a holder of an older token can be
// refused by anyone who has seen a newer one (a shared disk's fence record,
// vmm/fence.go). granted false with a nil error means the caller lost; an
// error means it could not ask, and it asks again later.
//
// Memory is the in-process implementation the simulator and the tests use.
// File is the one real hosts use: they share a file system, and each VM has
// one state file under an fcntl open-file-description lock (version 2,
// layout documented on File; version 1 is still read). Beyond Acquire, File
// records which host holds the newest epoch and whether it stopped cleanly
// (Release), so that a cleanly stopped primary may take the next epoch by
// itself; the daemon decides a cold start from that record together with
// its disk's side file (cmd/ftvm/diskstate.go). An operator may Reset the
// record (ftvm arbiter reset), or Adopt it for one host whose disk is the
// newest left (ftvm recover), once no daemon of the VM runs: each holds a
// shared lock on <vmID>.running, and an exclusive one on
// <vmID>@<host>.running so that no two run under one host name (Running).
//
// For hosts that share nothing but a network, lockstep/arbiter/etcd is the
// same interface on an etcd cluster: epochs granted by a transaction under
// the holder's lease, fences from etcd's revisions, and the same State,
// Release, Reset, Adopt and Running.
package arbiter
