// Package kvclient talks to the kvstore guest (vmm/guests/kvstore) over UDP
// and generates steady load against it, recording every operation as a
// history that bench/linearize can check.
//
// The protocol is one request per datagram to port 7000, one reply back:
//
//	<id> PUT <key> <value>  ->  <id> OK <version>
//	<id> GET <key>          ->  <id> VAL <version> <value>  or  <id> NONE
//	<id> INC <key>          ->  <id> VAL <n>
//	malformed               ->  <id> ERR <reason>           (? ERR <reason>)
//
// Keys are 1..64 bytes of '!'..'~', values 1..64 bytes of ' '..'~'.
//
// A [Client] owns one UDP socket and matches replies to requests by id. When
// a reply does not come within the attempt timeout it sends the same request
// again with the same id, up to a bounded number of attempts. The server does
// not deduplicate ids, so a retried write may be applied more than once; the
// recorded operation says how many attempts it took, and the checker allows
// for each of them.
//
// [Run] drives a Client at a configured rate and concurrency for a while, with
// a configured mix of PUT, GET and INC over fresh keys, and returns the
// history and totals: operations served and unanswered, latency percentiles
// and the largest gap between consecutive replies, which is what a client
// sees of a failover.
//
//	res, err := kvclient.Run(ctx, kvclient.Config{
//		Addr: "10.0.0.2:7000", RatePerSec: 1000, Concurrency: 32,
//		Duration: 30 * time.Second,
//		Progress: func(p kvclient.Progress) { fmt.Printf("\r%s", p.Line()) },
//	})
//	if err == nil {
//		err = linearize.Check(res.History)
//	}
package kvclient
