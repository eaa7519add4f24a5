// Package ft measures what fault tolerance costs: the same workloads run on
// an unprotected VM (a primary with no secondary) and on protected pairs
// (ack-on-receipt, ack-on-compare, over each transport asked for), one
// after the other in the same run, and every protected figure is held
// against the unprotected one of that run. It is `ftvm bench ft`.
//
// Each cell (a workload on a setup) is a fresh pair of real ftvm daemons
// on the bench/e2e test bed (two hosts and a client in network namespaces
// of this machine), started, brought in step, warmed up, and then measured
// over a window:
//
//   - throughput: the client's answered requests (kvstore), or the guest's
//     own progress as its released console shows it (memstress iterations,
//     nondet lines), per second of the window;
//   - client latency (kvstore): first send to reply, requests that began
//     and ended inside the window;
//   - output-hold latency: the primary's hold histogram (status socket,
//     "hold-histogram"), the difference of two snapshots around the window;
//   - log bandwidth: the bytes the primary's transport sent over the
//     window, in Mbit/s and per request (or per iteration, per line);
//   - resyncs: the secondary's restores over the window, and their pause:
//     from the primary's "checkpoint taken for the secondary" log line to
//     the secondary's "checkpoint restored" line of the same checkpoint
//     (shipping and restore; the primary is paused throughout, and a
//     little longer: the snapshot before, the acknowledgement after);
//   - CPU: user and system time of each daemon (/proc/PID/stat) over the
//     window, in percent of one core;
//   - scheduling (Sched, in results.json and in a row's "why lower"):
//     how long each daemon's vCPU thread (its busiest) ran and how long it
//     waited runnable for a CPU (/proc/PID/task/TID/schedstat), and the
//     machine's idle and steal time (/proc/stat), over the window. A vCPU
//     that hardly sleeps but waits for a CPU on a machine with no idle
//     CPU is CPU-bound: then more outstanding requests or a larger log
//     window cannot help (the row says "CPU-bound").
//
// Results go to an output directory: results.md (the Markdown table),
// results.json (every figure, the load average and the options) and one
// SVG latency-distribution plot per workload. Check verifies that a
// report's table has its shape and that every ratio was computed from the
// throughputs of the same report.
package ft
