// Package ringbench holds the bodies of the ring benchmarks and of their
// baselines (a buffered channel, a mutex-guarded queue), so that the same
// code runs under `go test -bench` (ring/bench_test.go) and from
// `ftvm bench rings` (through testing.Benchmark).
//
// Every body runs the producer and the consumer on separate goroutines,
// checks the order and a checksum of every item it moved (a wrong result
// fails the benchmark), and reports "ns/item" (or "p50-ns" for the
// ping-pong round trip). Cases lists them with their baselines and the
// speed-up targets; Evaluate turns measured values into PASS/MISS rows.
package ringbench
