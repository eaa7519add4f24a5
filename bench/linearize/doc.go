// Package linearize checks that a history of kvstore operations is
// linearizable: that some single order of the operations, consistent with
// real time, explains every reply the clients saw.
//
// A history is a slice of [Op], one per request a client issued, with the
// client's invoke and completion times and the reply. [Check] returns nil
// for a linearizable history, an error wrapping [*Violations] when it found
// a history no order can explain, and an [*InputError] when the history
// itself is malformed.
//
// # What it exploits
//
// The kvstore gives every key a version that starts at 0 (absent) and grows
// by exactly one on every applied PUT or INC, and it tells the client the
// version it created (PUT: "OK <version>") or read (GET: "VAL <version>
// <value>"). An INC reply "VAL <n>" names the counter's new value, and on a
// key that only INC writes the counter equals the version. So every
// acknowledged operation comes with the position it took in the key's
// sequence of states, and the search for an order that a general
// Wing–Gong checker would do collapses into a handful of per-key
// conditions that run in O(n log n). Linearizability is local (Herlihy and
// Wing): a history is linearizable iff each key's sub-history is, so keys are
// checked one at a time.
//
// # What it checks (per key)
//
//  1. Unique write versions: no two acknowledged writes got the same version
//     (a PUT version or an INC value acknowledged twice means one write was
//     lost and its slot reused).
//  2. Real-time order: if operation a completed before operation b was
//     invoked, then b's version is at least a's, and strictly greater when b
//     is a write. This catches an acknowledged write lost (a later GET reads
//     an older version or NONE), a stale read after a newer read, a counter
//     going backwards, and a read that returned a write invoked only after
//     the read had completed.
//  3. Reads match writes: a GET of version v returns the value of the
//     acknowledged write that created v; all GETs of the same version agree;
//     on a counter key a GET of version v returns the decimal v.
//  4. No value from nowhere: a GET of a version no acknowledged write
//     created must be explained by a write whose effect the client cannot
//     rule out (timed out, or retried so it may have been applied more than
//     once) with the same value, invoked before the GET completed.
//  5. Version budget: a version v seen by an operation needs v applied
//     writes; at most Attempts applications can come from each write invoked
//     before that operation completed (the server does not deduplicate
//     retried ids, so a retried write may be applied once per attempt).
//
// # What it assumes and cannot check
//
//   - Every key starts absent (version 0) when the history starts; the load
//     generator uses fresh key names per run for this reason.
//   - A key is either a register (PUT, GET) or a counter (INC, GET); a key
//     with both PUTs and INCs is refused as input.
//   - An ERR reply means the answered attempt was not applied (the kvstore
//     answers ERR only before it writes).
//   - The server's versions are trusted to mean what the protocol says; a
//     server that lost a write and then reported consistent but wrong
//     versions to everybody could pass.
//   - The check is sound (every violation it reports is one) but not
//     complete: timed-out writes are only counted (condition 5) and matched
//     by value (condition 4); whether the unobserved versions they filled
//     can be placed consistently with real time is not searched. Operations
//     with an unknown outcome that nobody observed constrain nothing.
package linearize
