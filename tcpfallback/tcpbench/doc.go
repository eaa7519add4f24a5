// Package tcpbench measures the TCP transport against the baselines it must
// beat, in one run so that the ratios mean something on a shared machine:
//
//   - bare: a Go TCP ping-pong of the same message size, one goroutine per
//     side doing write-then-read: the floor for anything over loopback TCP;
//   - ftvm: tcpfallback with a pre-shared key (frames in clear, CRC32C);
//   - ftvm-tls: tcpfallback with mutual TLS 1.3;
//   - grpc: a gRPC bidirectional stream carrying the same bytes (a raw-bytes
//     codec, so no protobuf work is counted against it);
//   - bare-busypoll and ftvm-busypoll (opt-in: -tcpbench.busypoll, or
//     ReportOptions.BusyPoll): both readers spin on non-blocking reads
//     before sleeping. They need a spare processor per spinner to mean
//     anything; on a shared 2-core machine they mostly measure the
//     neighbours.
//
// Every pinger does the same thing: the primary sends a log entry, the
// secondary answers with an acknowledgement of the same size, and the
// primary records the round trip in an HDR histogram (nanoseconds) and sends
// the next. In ftvm the primary's reading goroutine sends the next entry
// from OnFrame, which is the bare pinger's "write, then block in read" on one
// goroutine.
//
// The bodies are exported so that `ftvm bench transport` runs the same code
// as `go test -bench`: NewPinger and Pinger.RoundTrips for latency,
// NewLink with Link.SendEntries and Link.SendChunks for throughput, and
// CompareRTT for an interleaved run of all pingers with ratios to bare.
package tcpbench
