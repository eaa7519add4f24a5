// Package verbs is the rdma.Provider over real RDMA verbs (libibverbs,
// through cgo): RoCE v2 devices, a hardware NIC or the kernel's soft-RoCE
// (rdma_rxe).
//
// # Building
//
// The verbs code is built only with cgo and the ftvm_rdma build tag
// (`go build -tags ftvm_rdma ./...`, needs Debian's libibverbs-dev), so
// that a default build, and any CGO_ENABLED=0 build, stays free of cgo and
// of libibverbs. Without it, New, NewForPeer and Open fail with an error
// wrapping ErrNotBuilt ("built without RDMA support"), Supported is false,
// and Available says so; Devices, Route and Find, which read only sysfs
// and the routing table, work in every build.
//
// A static binary (one that runs in a box with no libc, as `make
// rdma-test` does) links the rxe provider in:
//
//	CGO_CFLAGS=-DRDMA_STATIC_PROVIDERS=rxe \
//	CGO_LDFLAGS='-l:librxe-rdmav34.a -l:libibverbs.a -l:libnl-route-3.a -l:libnl-3.a -lpthread -lm' \
//	go test -c -tags ftvm_rdma,netgo,osusergo -ldflags '-linkmode external -extldflags "-static"'
//
// # Discovery
//
// Find (and NewForPeer) picks what reaches a peer: the netdev the kernel
// routes the peer's address through (a local address: the netdev that
// holds it, as lo has no RDMA device), the RDMA device for that netdev
// (github.com/Mellanox/rdmamap), the port whose GID table has the netdev,
// and the RoCE v2 GID of the route's source address, found by reading
// gid_attrs/types and gids in sysfs, never by a fixed index; New checks
// the entry again with ibv_query_gid_ex. Available is that check for
// `--transport auto`. Devices lists every device, port and GID.
//
// # Endpoints and links
//
// Provider.Open makes a region (anonymous memory, registered LOCAL_WRITE
// and REMOTE_WRITE), a send CQ, a receive CQ with a completion channel,
// and an RC QP, moved to INIT with its receives posted. Connect checks
// the peer's Params, maps and registers staging the size of the peer's
// region (the source of every WRITE), and moves the QP to RTR (the peer's
// QPN, PSN and GID; the lower of the two ports' MTUs) and RTS.
//
// Posting a work request is a user-space doorbell on a hardware NIC; on
// soft-RoCE (rxe) it is a system call that runs rxe's requester in the
// kernel, so there the vCPU thread pays one per record. Polling and
// posting receives stay in user space on both.
//
// Write posts RDMA WRITEs, WriteImm RDMA WRITE_WITH_IMM (its imm in network
// byte order on the wire, as the spec has it), splitting a write longer
// than the port's largest message. One send WR in 32 is signalled; the
// writer reaps the send CQ itself, so a failed WRITE is seen by the next
// Write or by Err. Each WRITE_WITH_IMM consumes a zero-length receive;
// rdma.MaxUnpolledSignals (512) stay posted and are replenished 64 at a
// time by Poll. rnr_retry is 7 ("for ever"), so a receiver short of receives slows the writer down
// and never fails it. Poll is ibv_poll_cq, with no system call. Wait arms
// the CQ (ibv_req_notify_cq), polls once more, which catches an imm that
// came before the arming, and only then sleeps in ppoll on the completion
// channel's fd and an eventfd that Close writes.
//
// Revoke deregisters the region's MR, so the rkey the peer holds is
// dead: the peer's WRITE is answered with a remote access error, nothing
// lands, and the NAK moves both QPs to the error state. The peer's Err
// reports the failed WRITE; this side's Err reports ErrRevoked. Revoke
// does not move the QP to the error state first: a QP in that state drops
// the peer's packets silently, so the stale peer learns nothing (in the
// kvmbox its WRITE had not failed 30 s later), where the NAK reaches it in
// under a millisecond.
//
// # Params, version 1
//
// 56 bytes, little-endian, fixed layout; Connect refuses any other length,
// version or magic, and checks every field:
//
//	off size field
//	  0    4 magic    "FTVR"
//	  4    2 version  1
//	  6    2 length   56, the whole encoding
//	  8    4 qpn      the sender's RC QP number (24 bits, not 0)
//	 12    4 psn      the sender's first send PSN (24 bits, random)
//	 16    4 rkey     the rkey of the sender's region
//	 20    1 mtu      the sender port's active MTU, enum ibv_mtu (1..5: 256..4096 bytes)
//	 21    1 gidType  2 = RoCE v2, the only kind this package speaks
//	 22    2 reserved 0
//	 24   16 gid      the sender's RoCE v2 GID (not all zero)
//	 40    8 addr     the virtual address of the sender's region (not 0, no wrap-around)
//	 48    8 size     the region's size: a multiple of 4096, up to MaxRegionSize
//
// Params carry no secret: the caller sends them over the already
// authenticated TCP connection. Each endpoint has a protection domain of
// its own, so its rkey is good only through the QP that Connect connects,
// never through another peer's.
package verbs
