// Package dash is ftvm's window on a running pair: the Prometheus metrics
// a daemon serves on --metrics-listen (metrics.go, hist.go), and the live
// dashboard of `ftvm dash` and `ftvm demo --dash` (server.go, web/).
//
// Both read one thing, a Sample: the figures a daemon already keeps
// (agent.Stats and Status, the transport's counters, the output-hold
// latency HDR histogram), copied out when asked. Nothing here runs on the
// vCPU thread: a scrape or a dashboard poll takes the agent's locks as
// `ftvm status` does, for the time of a copy.
//
// A daemon answers the control-socket request "sample" (SampleRequest)
// with a Sample as JSON; the dashboard polls each host's control socket
// with it (ControlSource), derives the pair's view from the two hosts'
// samples (hold-latency percentiles of each interval from the difference
// of successive HDR snapshots, the log bandwidth from the difference of
// byte counters, events from changes of role and counters) and pushes a
// frame to every open page as a server-sent event each poll.
//
// The metric names, types and labels are in Metrics (one table, also in
// the README); grafana/ftvm.json is a Grafana dashboard over exactly
// those names, which a test checks.
package dash
