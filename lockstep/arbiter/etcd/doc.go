// Package etcd is the arbiter for hosts that share nothing but a network:
// epochs are granted by an etcd cluster, and a grant holds only while the
// holder keeps its etcd lease alive.
//
// # Keys and values
//
// Every key of a VM is under <prefix>vm/<vmID>/ (the prefix is "/ftvm/"
// unless Config.Prefix says otherwise; vmID is 1 to 64 letters, digits,
// '.', '_' or '-', as for the File arbiter). Values are JSON.
//
//	key                       value                                        lease
//	<vm>/epoch                {"epoch":E,"holder":"h"}                     none
//	<vm>/lease                {"epoch":E,"holder":"h"}                     h's
//	<vm>/released             {"epoch":E,"fence":F,"holder":"h"}           none
//	<vm>/running/<host>       {"pid":P,"since":"RFC 3339 time"}            the daemon's own
//
// What each key is for:
//
//   - epoch is the newest epoch granted and the host it went to. It is
//     written only by the transaction that grants an epoch, so its
//     ModRevision is that transaction's revision: the fence token of the
//     grant. etcd's revision grows with every write to the cluster, so a
//     later grant always carries a larger fence.
//   - lease says which host may act as primary right now. It is written by
//     the same transaction, attached to the holder's lease, so etcd deletes
//     it by itself when the lease expires (the holder died or lost etcd for
//     the lease's TTL) or is revoked (a clean stop).
//   - released records a clean stop (Release), an operator's reset (holder
//     "") or an adoption (holder named): the epoch it names, with that
//     epoch's fence, was given up, and State reports it Released. It
//     counts only while it names the newest epoch and its fence.
//   - running/<host> exists while a daemon of the VM runs on host (Running),
//     under a lease of that daemon's own that the client keeps alive: no
//     two daemons of a VM run under one host name.
//
// # Transitions
//
// Acquire(vmID, E), on host h, reads epoch and lease in one snapshot, then:
//
//   - E is not newer than epoch's: refused (granted false, no error): a
//     newer primary exists, the caller halts.
//   - lease names another lease than h's (a live primary, or one that died
//     less than a TTL ago): Acquire watches lease until etcd deletes it, or
//     until its context ends (an error, not a refusal: the node asks
//     again). A host that died is replaced only once its lease ran out, so
//     no two hosts ever act at once.
//   - otherwise one transaction: if epoch's ModRevision is still the one
//     read and lease is still absent (or still h's lease), put epoch
//     {E, h} and put lease {E, h} under h's lease; the transaction's
//     revision is the fence. A transaction that fails (another host got
//     there first) is read again from the start.
//
// The holder keeps its lease alive with one keep-alive every TTL/3. Its
// lease is good until the time it sent the last keep-alive that was
// answered, plus the TTL the answer gave: etcd counts the TTL from when it
// received that request, which is later, so the holder's deadline always
// comes before etcd's. Check fails from that deadline on, and Lost is
// closed: the agent refuses every release from then on and halts
// (agent.Config.Lease). The lease is also lost, at once, when a
// keep-alive answers that etcd no longer has it, or when the epoch key
// names a newer epoch or the lease key another lease (an operator's reset
// of a running VM). A lost lease stays lost: this Arbiter grants nothing
// more, and the daemon must be started again.
//
// Release(vmID, E, F): if epoch's ModRevision is still F and it names this
// host, one transaction puts released {E, F, h} and deletes lease; then
// the lease is revoked. Another host may take epoch E+1 at once.
//
// Reset(vmID) and Adopt(vmID, host) put released {E, F, ""} or {E, F,
// host} for the newest epoch, refused while any running/ key of the VM
// exists (a daemon runs).
//
// What a pair does when etcd is out of reach: nothing changes while it
// is reachable again within the TTL. Past the TTL the primary halts, and
// no host can win the next epoch until a quorum of etcd answers: the VM
// stops being served, and nothing is released that the arbiter did not
// grant. A lost quorum is the same as a cut-off primary for the pair,
// except that etcd's leader goes on answering keep-alives until raft's
// quorum check makes it step down (one to two election timeouts): the
// lease runs a TTL from the last one it answered. That is safe: a leader
// elected later extends every lease by an election timeout before any
// can expire.
package etcd
