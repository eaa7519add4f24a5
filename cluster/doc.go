// Package cluster is the pool of hosts on etcd: hosts register, VMs are
// placed on them as pairs (a primary and a secondary), and when a host
// dies every VM it held is protected again on the hosts left, with no
// person acting. `ftvm host` runs a Host on every machine of the pool;
// `ftvm cluster add|remove|status` edits and shows the pool.
//
// # Keys and values
//
// Every key is under the prefix (DefaultPrefix, "/ftvm/", the etcd
// arbiter's too: the pool's VMs are arbitrated by lockstep/arbiter/etcd
// under <prefix>vm/). Values are JSON.
//
//	key                              value (type)                               lease      written by
//	<p>pool/host/<host>              {"addr","slots","free","since"} HostInfo    the host's the host
//	<p>pool/vm/<vm>/spec             {"port","args"} VMSpec                      none       ftvm cluster add
//	<p>pool/vm/<vm>/place            {"primary","secondary","gen"} Placement     none       the placement leader
//	<p>pool/vm/<vm>/at/<host>        {"role","protected","synced","epoch","pid",  the host's the host
//	                                  "allow_peers"} DaemonState
//	<p>pool/leader/<lease id>        the host's name (concurrency.Election)      the host's every host, campaigning
//	<p>vm/<vm>/lease                 {"epoch","holder"} (the etcd arbiter's)     the daemon's the VM's primary daemon
//
// What each is for:
//
//   - pool/host/<host> exists while the host is alive: it is put under the
//     host's session lease (concurrency.Session, TTL --lease-ttl), which the
//     host keeps alive; when the host dies, or loses etcd for the TTL, etcd
//     deletes it and every other key under that lease. A second host of the
//     same name is refused while the key exists. free is informational (the
//     host's own count); placement counts from the placements.
//   - pool/vm/<vm>/spec is the VM: the port its daemons listen on for their
//     secondary (one port per VM, so that one host can hold several VMs),
//     and the daemon flags both roles take (--guest, --cmdline, --tap,
//     --mac, ...). The host adds --vm-id, --listen, --peer, --peer-name,
//     --allow-peers, --host-name, --tls-*, --arbiter etcd and its
//     endpoints, --disk, --control and --console.
//   - pool/vm/<vm>/place is where the VM's daemons should run. Only the
//     elected leader writes it, each write a transaction that compares the
//     revision the leader read it at and the leader's election key (a
//     leader that lost its lease writes nothing).
//   - pool/vm/<vm>/at/<host> is what the host's daemon of the VM says of
//     itself (its control socket's status), put whenever it changes, and
//     the --allow-peers the host gave it (placement picks its secondary
//     among those only: the daemon would refuse any other host). A
//     VM is protected when the host the arbiter's lease names is the
//     placed primary and its daemon reports protected (a secondary in
//     step).
//   - vm/<vm>/lease is the etcd arbiter's: the host acting as the VM's
//     primary now. Placement reads it to learn that a secondary took over.
//
// # Transitions
//
// Placement (Plan, run by the elected leader on every change of the keys
// above, and at least every second):
//
//   - spec put, no place: place {primary: the live host with the most
//     free slots, secondary: the next one, gen 1}.
//   - the placed secondary's host key is gone: secondary "" (gen+1).
//   - secondary "", the primary's host live and the arbiter's lease naming
//     it: secondary = the live host with the most free slots that is not
//     the primary (gen+1). A VM's two daemons are never on one host.
//   - the arbiter's lease names another host (the secondary took over
//     once the dead primary's lease ran out): primary = that host, and a
//     new secondary as above, in one write (gen+1).
//   - the primary's host dead and the secondary not holding the lease yet:
//     nothing; both dead: the VM is lost to the pool (Status says LOST);
//     an operator restarts it from the newest disk as the README says.
//
// Each host (Host.Run), on every change and every 100 ms:
//
//   - a VM placed on it with no daemon here: start `ftvm primary` if it is
//     the placed primary, `ftvm secondary --peer <primary's addr:port>
//     --peer-name <primary>` if it is the placed secondary (and the
//     primary's host is live). The secondary joins by pre-copy, as any
//     secondary does. A daemon that exited is started again after a
//     second if the VM is still placed here (a primary restarted so is
//     refused by its own cold-start check unless its disk is the newest).
//   - a daemon of a VM no longer placed here: stopped (SIGTERM; a primary
//     so stopped records a clean stop), and its at/ key deleted.
//   - a daemon started as secondary that took over goes on running: the
//     placement then names this host primary, with no restart.
//
// A host whose lease is lost while it lives (etcd out of its reach, or
// the host starved, for the TTL) is dead to the pool until it registers
// again under a new lease, which it does at once (Host.NewSession). It
// does not stop its daemons meanwhile: each holds its own arbiter lease,
// and a primary that lost that one too halts by itself while its
// secondary takes over. Placement may move the host's secondaries
// elsewhere while it is away; the host then stops them, as above.
//
// What a host death looks like, end to end: the host's keys go when its
// lease runs out (TTL); the primaries it held lose their arbiter lease at
// about the same time, and each of their secondaries takes over (the
// arbiter grants the next epoch once the dead lease is gone); placement
// sees each take-over and places a new secondary on a live host, whose
// daemon joins by pre-copy. Secondaries the dead host held are replaced as
// soon as its host key is gone. If the dead host was the placement leader,
// another host is elected when the leader key's lease runs out.
//
// Limits: a daemon's --allow-peers are the pool's hosts registered when
// it starts, so a host that joins the pool later can be a secondary only
// of daemons started after it registered (placement knows it, and never
// places a secondary its primary would refuse). A VM both of whose hosts died
// is not restarted by the pool.
package cluster
