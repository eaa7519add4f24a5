// Package rdma ships ftvm's control-lane frames (log entries, output
// records, acknowledgements, control messages) into the peer's memory with
// one-sided writes, over real verbs (rdma/verbs) or a shared-memory file
// (rdma/shm). link.go is the seam between the ring protocol and those
// memories.
//
// The wire protocol is to be documented here byte by byte.
package rdma
