//go:build ftvm_rdma && cgo && linux

package verbs

/*
#cgo LDFLAGS: -libverbs
#include <infiniband/verbs.h>
#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

// One completion, flattened: struct ibv_wc's imm_data sits in an anonymous
// union that cgo cannot name.
struct ftvm_comp {
	uint64_t wr_id;
	uint32_t status;
	uint32_t opcode;
	uint32_t imm;
	uint32_t has_imm;
	uint32_t vendor_err;
	uint32_t byte_len;
};

enum { FTVM_POLL_MAX = 32, FTVM_RECV_BATCH = 64 };

static struct ibv_context *ftvm_open_device(const char *name) {
	int n = 0;
	struct ibv_device **list = ibv_get_device_list(&n);
	if (list == NULL)
		return NULL;
	struct ibv_context *ctx = NULL;
	errno = ENODEV;
	for (int i = 0; i < n; i++) {
		if (strcmp(ibv_get_device_name(list[i]), name) == 0) {
			ctx = ibv_open_device(list[i]);
			break;
		}
	}
	int saved = errno;
	ibv_free_device_list(list);
	errno = saved;
	return ctx;
}

static int ftvm_query_port(struct ibv_context *ctx, int port, int *state, int *mtu,
			   int *link_layer, uint32_t *max_msg) {
	struct ibv_port_attr a;
	int r = ibv_query_port(ctx, port, &a);
	if (r)
		return r;
	*state = a.state;
	*mtu = a.active_mtu;
	*link_layer = a.link_layer;
	*max_msg = a.max_msg_sz;
	return 0;
}

static int ftvm_query_gid(struct ibv_context *ctx, int port, int idx, uint8_t *gid, int *type) {
	struct ibv_gid_entry e;
	int r = ibv_query_gid_ex(ctx, port, idx, &e, 0);
	if (r)
		return r;
	memcpy(gid, e.gid.raw, 16);
	*type = e.gid_type;
	return 0;
}

static struct ibv_qp *ftvm_create_qp(struct ibv_pd *pd, struct ibv_cq *scq, struct ibv_cq *rcq,
				     int sq, int rq, int inline_max, int *inline_got) {
	struct ibv_qp_init_attr a;
	memset(&a, 0, sizeof a);
	a.send_cq = scq;
	a.recv_cq = rcq;
	a.qp_type = IBV_QPT_RC;
	a.cap.max_send_wr = sq;
	a.cap.max_recv_wr = rq;
	a.cap.max_send_sge = 1;
	a.cap.max_recv_sge = 1;
	a.cap.max_inline_data = inline_max;
	struct ibv_qp *qp = ibv_create_qp(pd, &a);
	if (qp)
		*inline_got = a.cap.max_inline_data;
	return qp;
}

static int ftvm_qp_init(struct ibv_qp *qp, int port) {
	struct ibv_qp_attr a;
	memset(&a, 0, sizeof a);
	a.qp_state = IBV_QPS_INIT;
	a.pkey_index = 0;
	a.port_num = port;
	a.qp_access_flags = IBV_ACCESS_REMOTE_WRITE;
	return ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS);
}

static int ftvm_qp_rtr(struct ibv_qp *qp, int port, int mtu, uint32_t dqpn, uint32_t rpsn,
		       const uint8_t *dgid, int sgid_index) {
	struct ibv_qp_attr a;
	memset(&a, 0, sizeof a);
	a.qp_state = IBV_QPS_RTR;
	a.path_mtu = mtu;
	a.dest_qp_num = dqpn;
	a.rq_psn = rpsn;
	a.max_dest_rd_atomic = 1;
	a.min_rnr_timer = 1; // 0.01 ms: a receiver replenishes in batches, quickly
	a.ah_attr.is_global = 1;
	a.ah_attr.port_num = port;
	a.ah_attr.sl = 0;
	memcpy(a.ah_attr.grh.dgid.raw, dgid, 16);
	a.ah_attr.grh.sgid_index = sgid_index;
	a.ah_attr.grh.hop_limit = 64;
	return ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
					     IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER);
}

static int ftvm_qp_rts(struct ibv_qp *qp, uint32_t psn, int timeout, int retry) {
	struct ibv_qp_attr a;
	memset(&a, 0, sizeof a);
	a.qp_state = IBV_QPS_RTS;
	a.sq_psn = psn;
	a.timeout = timeout;
	a.retry_cnt = retry;
	a.rnr_retry = 7; // 7 is "retry for ever": a receiver short of receives stalls the sender, never fails it
	a.max_rd_atomic = 1;
	return ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT |
					     IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC);
}

static int ftvm_qp_error(struct ibv_qp *qp) {
	struct ibv_qp_attr a;
	memset(&a, 0, sizeof a);
	a.qp_state = IBV_QPS_ERR;
	return ibv_modify_qp(qp, &a, IBV_QP_STATE);
}

static int ftvm_post_write(struct ibv_qp *qp, uint64_t laddr, uint32_t lkey, uint64_t raddr,
			   uint32_t rkey, uint32_t len, int with_imm, uint32_t imm, int signaled,
			   int inline_data, uint64_t wr_id) {
	struct ibv_sge sge = {.addr = laddr, .length = len, .lkey = lkey};
	struct ibv_send_wr wr, *bad = NULL;
	memset(&wr, 0, sizeof wr);
	wr.wr_id = wr_id;
	if (len > 0) {
		wr.sg_list = &sge;
		wr.num_sge = 1;
	}
	wr.opcode = with_imm ? IBV_WR_RDMA_WRITE_WITH_IMM : IBV_WR_RDMA_WRITE;
	if (with_imm)
		wr.imm_data = htonl(imm);
	wr.send_flags = (signaled ? IBV_SEND_SIGNALED : 0) | (inline_data ? IBV_SEND_INLINE : 0);
	wr.wr.rdma.remote_addr = raddr;
	wr.wr.rdma.rkey = rkey;
	return ibv_post_send(qp, &wr, &bad);
}

// ftvm_post_recvs posts n (at most FTVM_RECV_BATCH) zero-length receives,
// each consumed by one WRITE_WITH_IMM, in one chained call.
static int ftvm_post_recvs(struct ibv_qp *qp, int n) {
	struct ibv_recv_wr wrs[FTVM_RECV_BATCH], *bad = NULL;
	if (n > FTVM_RECV_BATCH)
		n = FTVM_RECV_BATCH;
	if (n <= 0)
		return 0;
	memset(wrs, 0, sizeof wrs);
	for (int i = 0; i < n; i++)
		wrs[i].next = i + 1 < n ? &wrs[i + 1] : NULL;
	return ibv_post_recv(qp, wrs, &bad);
}

static int ftvm_poll(struct ibv_cq *cq, int n, struct ftvm_comp *out) {
	struct ibv_wc wc[FTVM_POLL_MAX];
	if (n > FTVM_POLL_MAX)
		n = FTVM_POLL_MAX;
	int r = ibv_poll_cq(cq, n, wc);
	for (int i = 0; i < r; i++) {
		out[i].wr_id = wc[i].wr_id;
		out[i].status = wc[i].status;
		out[i].opcode = wc[i].opcode;
		out[i].has_imm = (wc[i].wc_flags & IBV_WC_WITH_IMM) != 0;
		out[i].imm = ntohl(wc[i].imm_data);
		out[i].vendor_err = wc[i].vendor_err;
		out[i].byte_len = wc[i].byte_len;
	}
	return r;
}

static int ftvm_req_notify(struct ibv_cq *cq) { return ibv_req_notify_cq(cq, 0); }

static int ftvm_get_event(struct ibv_comp_channel *ch) {
	struct ibv_cq *cq;
	void *ctx;
	return ibv_get_cq_event(ch, &cq, &ctx);
}
*/
import "C"

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/ftvm/ftvm/rdma"
	"golang.org/x/sys/unix"
)

// Supported reports whether this build has RDMA verbs support.
const Supported = true

// Queue depths and timers. Every bound has a name and a reason.
const (
	// sqDepth bounds the send work requests in flight. signalEvery is how
	// often one is signalled: an unsignalled WR's slot is reclaimed when a
	// later signalled one completes.
	sqDepth     = 256
	signalEvery = 32
	// rqDepth receives stay posted for WRITE_WITH_IMM, as many as the
	// signals the ring protocol may leave unpolled (rdma.MaxUnpolledSignals);
	// they are replenished once recvBatch of them have been consumed, in
	// chained posts.
	rqDepth   = rdma.MaxUnpolledSignals
	recvBatch = 64
	// cqDepth holds every completion either queue can produce, plus slack.
	cqDepth = 2 * (sqDepth + rqDepth)
	// ackEventsEvery batches ibv_ack_cq_events, which takes a lock.
	ackEventsEvery = 64
	// inlineMax asks for writes this short to be copied into the WR, so
	// the NIC need not DMA them from staging.
	inlineMax = 128
	// qpTimeout is the RC ACK timeout exponent (4.096 us * 2^14 = 67 ms)
	// and qpRetry the retries after it: a peer gone silent fails the link
	// in about half a second. Not 7: rxe, like rnr_retry, reads a
	// retry_cnt of 7 as "for ever", and a WRITE to a dead peer never fails.
	qpTimeout = 14
	qpRetry   = 6
)

// A Link holds rdma.MaxUnpolledSignals unpolled signals: one receive each.
var _ = [rqDepth - rdma.MaxUnpolledSignals]struct{}{}

// Provider opens verbs endpoints on one device port and GID. It holds
// the device context; each endpoint has a protection domain of its own.
type Provider struct {
	cfg      Config
	gidIndex int
	gid      [16]byte
	mtu      int    // enum ibv_mtu of the port
	maxMsg   uint32 // the port's largest message

	mu     sync.Mutex // guards refs, closed, and the teardown of ctx
	refs   int        // open endpoints, each holding ctx
	closed bool
	ctx    *C.struct_ibv_context
}

var _ rdma.Provider = (*Provider)(nil)

// NewForPeer makes a Provider on the device that serves the route to
// peer (Find), with the RoCE v2 GID of the route's source address.
func NewForPeer(peer netip.Addr) (*Provider, error) {
	cfg, err := Find(peer)
	if err != nil {
		return nil, err
	}
	return New(cfg)
}

// New opens cfg.Device and looks up the RoCE v2 GID for cfg.Addr. Close
// the Provider after its endpoints.
func New(cfg Config) (*Provider, error) {
	if cfg.Device == "" {
		return nil, errors.New("verbs: no device named: set Config.Device (see `ftvm rdma devices`) or use NewForPeer")
	}
	if cfg.Port == 0 {
		cfg.Port = 1
	}
	if cfg.Port < 1 || cfg.Port > 255 {
		return nil, fmt.Errorf("verbs: port %d is not 1..255", cfg.Port)
	}
	g, err := gidFor(cfg.Device, cfg.Port, cfg.Addr)
	if err != nil {
		return nil, err
	}
	name := C.CString(cfg.Device)
	defer C.free(unsafe.Pointer(name))
	ctx, err := C.ftvm_open_device(name)
	if ctx == nil {
		return nil, fmt.Errorf("verbs: opening device %s: %w (is ib_uverbs loaded and /dev/infiniband readable?)", cfg.Device, errnoOr(err, syscall.ENODEV))
	}
	p := &Provider{cfg: cfg, gidIndex: g.Index, ctx: ctx}
	fail := func(err error) (*Provider, error) {
		C.ibv_close_device(ctx)
		return nil, err
	}
	var state, mtu, ll C.int
	var maxMsg C.uint32_t
	if r := C.ftvm_query_port(ctx, C.int(cfg.Port), &state, &mtu, &ll, &maxMsg); r != 0 {
		return fail(fmt.Errorf("verbs: querying %s port %d: %w", cfg.Device, cfg.Port, syscall.Errno(r)))
	}
	if state != C.IBV_PORT_ACTIVE {
		return fail(fmt.Errorf("verbs: %s port %d is not active (state %d): bring its netdev up", cfg.Device, cfg.Port, int(state)))
	}
	if ll != C.IBV_LINK_LAYER_ETHERNET {
		return fail(fmt.Errorf("verbs: %s port %d is not Ethernet (RoCE); InfiniBand addressing is not supported", cfg.Device, cfg.Port))
	}
	p.mtu, p.maxMsg = int(mtu), uint32(maxMsg)
	var typ C.int
	if r := C.ftvm_query_gid(ctx, C.int(cfg.Port), C.int(g.Index), (*C.uint8_t)(unsafe.Pointer(&p.gid[0])), &typ); r != 0 {
		return fail(fmt.Errorf("verbs: querying GID %d of %s port %d: %w", g.Index, cfg.Device, cfg.Port, syscall.Errno(r)))
	}
	if typ != C.IBV_GID_TYPE_ROCE_V2 || p.gid != g.GID.As16() {
		return fail(fmt.Errorf("verbs: GID %d of %s port %d is %x type %d on the device but %v %s in sysfs: the table changed under us, retry", g.Index, cfg.Device, cfg.Port, p.gid, int(typ), g.GID, g.Type))
	}
	return p, nil
}

// Name is "rdma".
func (p *Provider) Name() string { return "rdma" }

// Config is the device, port and address the Provider uses.
func (p *Provider) Config() Config { return p.cfg }

// GIDIndex is the index of the RoCE v2 GID the Provider found.
func (p *Provider) GIDIndex() int { return p.gidIndex }

// Close releases the device once the last endpoint is closed; idempotent.
func (p *Provider) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed {
		p.closed = true
		p.releaseLocked()
	}
	return nil
}

func (p *Provider) acquire() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("verbs: provider closed")
	}
	p.refs++
	return nil
}

func (p *Provider) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refs--
	p.releaseLocked()
}

func (p *Provider) releaseLocked() {
	if p.closed && p.refs == 0 && p.ctx != nil {
		C.ibv_close_device(p.ctx)
		p.ctx = nil
	}
}

// Open makes an endpoint: a region of size bytes registered for
// REMOTE_WRITE, completion queues with a completion channel, and an RC QP
// in INIT with its receives posted.
func (p *Provider) Open(size int) (rdma.Endpoint, error) {
	if size <= 0 || size%pageSize != 0 || size > MaxRegionSize {
		return nil, fmt.Errorf("verbs: region size %d is not a multiple of %d in %d..%d", size, pageSize, pageSize, MaxRegionSize)
	}
	if err := p.acquire(); err != nil {
		return nil, err
	}
	c := &conn{p: p, wakeFd: -1}
	if err := c.open(size); err != nil {
		c.destroy()
		return nil, err
	}
	return c, nil
}

// conn is an endpoint and, once connected, its link: one object, so that
// Endpoint.Close and Link.Close tear down the same resources once.
type conn struct {
	p  *Provider
	pd *C.struct_ibv_pd // this endpoint's alone, so that no other peer's QP can use its rkey

	local   []byte // mmapped, registered for REMOTE_WRITE
	mr      *C.struct_ibv_mr
	staging []byte // mmapped, registered as a WRITE source (after Connect)
	smr     *C.struct_ibv_mr
	ch      *C.struct_ibv_comp_channel
	scq     *C.struct_ibv_cq // send completions: the writer's
	rcq     *C.struct_ibv_cq // receive (imm) completions: the poller's
	qp      *C.struct_ibv_qp
	psn     uint32
	inline  int
	wakeFd  int // eventfd that Close writes to wake a Wait
	self    params
	peer    params

	connected atomic.Bool
	broken    atomic.Bool // a Connect failed after touching the QP
	closed    atomic.Bool
	closeOnce sync.Once
	failure   atomic.Pointer[error] // the first failure, for Err

	revokeMu sync.Mutex // guards mr against a concurrent Revoke and Close
	revoked  bool

	// sendMu: held by Write, WriteImm and the send-queue reaping in Err.
	sendMu      sync.Mutex
	outstanding int // send WRs posted and not known complete
	sinceSignal int // unsignalled WRs since the last signalled one
	scomps      [C.FTVM_POLL_MAX]C.struct_ftvm_comp

	// pollMu: held by Poll and Wait.
	pollMu       sync.Mutex
	pending      []uint32 // imms Wait polled, which the next Poll returns first
	recvConsumed int      // receives used since the last replenishment
	unackedEv    int      // completion events not yet acknowledged
	rcomps       [C.FTVM_POLL_MAX]C.struct_ftvm_comp
}

var (
	_ rdma.Endpoint = (*conn)(nil)
	_ rdma.Link     = (*conn)(nil)
)

func errnoOr(err error, def syscall.Errno) error {
	var e syscall.Errno
	if errors.As(err, &e) && e != 0 {
		return e
	}
	return def
}

func mapRegion(size int) ([]byte, error) {
	b, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("verbs: mapping a %d-byte region: %w", size, err)
	}
	return b, nil
}

func (c *conn) open(size int) error {
	var err error
	p := c.p
	pd, err := C.ibv_alloc_pd(p.ctx)
	if pd == nil {
		return fmt.Errorf("verbs: allocating a protection domain on %s: %w", p.cfg.Device, errnoOr(err, syscall.ENOMEM))
	}
	c.pd = pd
	if c.local, err = mapRegion(size); err != nil {
		return err
	}
	mr, err := C.ibv_reg_mr(pd, unsafe.Pointer(&c.local[0]), C.size_t(size), C.IBV_ACCESS_LOCAL_WRITE|C.IBV_ACCESS_REMOTE_WRITE)
	if mr == nil {
		return fmt.Errorf("verbs: registering a %d-byte region: %w (raise the locked-memory limit, ulimit -l)", size, errnoOr(err, syscall.ENOMEM))
	}
	c.mr = mr
	ch, err := C.ibv_create_comp_channel(p.ctx)
	if ch == nil {
		return fmt.Errorf("verbs: creating a completion channel: %w", errnoOr(err, syscall.ENOMEM))
	}
	c.ch = ch
	if err := unix.SetNonblock(int(ch.fd), true); err != nil {
		return fmt.Errorf("verbs: completion channel: %w", err)
	}
	scq, err := C.ibv_create_cq(p.ctx, cqDepth, nil, nil, 0)
	if scq == nil {
		return fmt.Errorf("verbs: creating the send CQ: %w", errnoOr(err, syscall.ENOMEM))
	}
	c.scq = scq
	rcq, err := C.ibv_create_cq(p.ctx, cqDepth, nil, ch, 0)
	if rcq == nil {
		return fmt.Errorf("verbs: creating the receive CQ: %w", errnoOr(err, syscall.ENOMEM))
	}
	c.rcq = rcq
	var inl C.int
	qp, err := C.ftvm_create_qp(pd, scq, rcq, sqDepth, rqDepth, inlineMax, &inl)
	if qp == nil {
		return fmt.Errorf("verbs: creating an RC QP: %w", errnoOr(err, syscall.ENOMEM))
	}
	c.qp, c.inline = qp, int(inl)
	if r := C.ftvm_qp_init(qp, C.int(p.cfg.Port)); r != 0 {
		return fmt.Errorf("verbs: QP to INIT: %w", syscall.Errno(r))
	}
	if err := c.postRecvs(rqDepth); err != nil {
		return err
	}
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return fmt.Errorf("verbs: choosing a PSN: %w", err)
	}
	c.psn = binary.LittleEndian.Uint32(rnd[:]) & maxPSN
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("verbs: eventfd: %w", err)
	}
	c.wakeFd = fd
	c.self = params{
		qpn:  uint32(qp.qp_num),
		psn:  c.psn,
		rkey: uint32(mr.rkey),
		mtu:  uint8(p.mtu),
		gid:  p.gid,
		addr: uint64(uintptr(unsafe.Pointer(&c.local[0]))),
		size: uint64(size),
	}
	return nil
}

func (c *conn) postRecvs(n int) error {
	for n > 0 {
		k := min(n, recvBatch)
		if r := C.ftvm_post_recvs(c.qp, C.int(k)); r != 0 {
			return fmt.Errorf("verbs: posting %d receives: %w", k, syscall.Errno(r))
		}
		n -= k
	}
	return nil
}

// Local is the region the peer writes into.
func (c *conn) Local() []byte { return c.local }

// Params is this endpoint's version 1 encoding (see the package doc).
func (c *conn) Params() []byte { return appendParams(nil, c.self) }

// Connect checks the peer's Params, registers staging the size of the
// peer's region, and moves the QP through RTR to RTS.
func (c *conn) Connect(peer []byte) (rdma.Link, error) {
	if c.closed.Load() {
		return nil, ErrClosed
	}
	if c.connected.Load() {
		return nil, errors.New("verbs: endpoint already connected")
	}
	if c.broken.Load() {
		return nil, errors.New("verbs: an earlier Connect failed half-way: Close this endpoint and Open a new one")
	}
	pp, err := parseParams(peer)
	if err != nil {
		return nil, err
	}
	mtu := min(int(pp.mtu), c.p.mtu)
	staging, err := mapRegion(int(pp.size))
	if err != nil {
		return nil, err
	}
	smr, err := C.ibv_reg_mr(c.pd, unsafe.Pointer(&staging[0]), C.size_t(len(staging)), C.IBV_ACCESS_LOCAL_WRITE)
	if smr == nil {
		unix.Munmap(staging)
		return nil, fmt.Errorf("verbs: registering %d bytes of staging: %w (raise ulimit -l)", len(staging), errnoOr(err, syscall.ENOMEM))
	}
	c.staging, c.smr, c.peer = staging, smr, pp
	if r := C.ftvm_qp_rtr(c.qp, C.int(c.p.cfg.Port), C.int(mtu), C.uint32_t(pp.qpn), C.uint32_t(pp.psn),
		(*C.uint8_t)(unsafe.Pointer(&pp.gid[0])), C.int(c.p.gidIndex)); r != 0 {
		c.broken.Store(true)
		return nil, fmt.Errorf("verbs: QP to RTR toward peer QP %#x GID %v: %w", pp.qpn, netip.AddrFrom16(pp.gid), syscall.Errno(r))
	}
	if r := C.ftvm_qp_rts(c.qp, C.uint32_t(c.psn), qpTimeout, qpRetry); r != 0 {
		c.broken.Store(true)
		return nil, fmt.Errorf("verbs: QP to RTS: %w", syscall.Errno(r))
	}
	c.connected.Store(true)
	return c, nil
}

// Staging is the local source of Write, the size of the peer's region.
func (c *conn) Staging() []byte { return c.staging }

// PeerSize is the size of the peer's region.
func (c *conn) PeerSize() int { return int(c.peer.size) }

// Write posts RDMA WRITEs of Staging()[off:off+n] to the same offsets of
// the peer's region.
func (c *conn) Write(off, n int) error { return c.write(off, n, false, 0) }

// WriteImm posts the write as RDMA WRITE_WITH_IMM carrying imm (a
// zero-length one when n is 0).
func (c *conn) WriteImm(off, n int, imm uint32) error { return c.write(off, n, true, imm) }

func (c *conn) write(off, n int, withImm bool, imm uint32) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	if err := c.usable(); err != nil {
		return err
	}
	if off < 0 || n < 0 || off > int(c.peer.size) || n > int(c.peer.size)-off {
		return fmt.Errorf("verbs: write of %d bytes at offset %d is outside the peer's %d-byte region", n, off, c.peer.size)
	}
	if n == 0 && !withImm {
		return nil
	}
	// A write longer than the port's largest message goes as several WRs;
	// only the last carries imm, and RC places them in order.
	maxMsg := int(c.p.maxMsg)
	for {
		k := n
		if k > maxMsg {
			k = maxMsg
		}
		last := k == n
		if err := c.post(off, k, withImm && last, imm); err != nil {
			return err
		}
		if last {
			return nil
		}
		off, n = off+k, n-k
	}
}

// post posts one WR; sendMu is held.
func (c *conn) post(off, n int, withImm bool, imm uint32) error {
	// Keep a slot free: wait for a signalled WR to complete when the send
	// queue is full. A dead peer fails the link after the RC retries, so
	// the wait is bounded by qpTimeout and qpRetry.
	for spins := 0; c.outstanding >= sqDepth-1; spins++ {
		if err := c.reapSend(); err != nil {
			return err
		}
		if c.outstanding < sqDepth-1 {
			break
		}
		if c.closed.Load() {
			return ErrClosed
		}
		if spins > 1000 {
			time.Sleep(20 * time.Microsecond)
		}
	}
	c.sinceSignal++
	signaled := c.sinceSignal >= signalEvery
	var wrID uint64
	if signaled {
		wrID = uint64(c.sinceSignal)
		c.sinceSignal = 0
	}
	inline := n > 0 && n <= c.inline
	laddr := uint64(uintptr(unsafe.Pointer(&c.staging[0]))) + uint64(off)
	r := C.ftvm_post_write(c.qp, C.uint64_t(laddr), c.smr.lkey, C.uint64_t(c.peer.addr+uint64(off)), C.uint32_t(c.peer.rkey),
		C.uint32_t(n), boolInt(withImm), C.uint32_t(imm), boolInt(signaled), boolInt(inline), C.uint64_t(wrID))
	if r != 0 {
		err := fmt.Errorf("verbs: posting an RDMA WRITE: %w", syscall.Errno(r))
		c.fail(err)
		return err
	}
	c.outstanding++
	if c.outstanding >= signalEvery {
		// Reap now and then; a failure it finds fails the next Write, not
		// this one, which is posted.
		c.reapSendQuiet()
	}
	return nil
}

func boolInt(b bool) C.int {
	if b {
		return 1
	}
	return 0
}

// reapSend polls the send CQ without blocking; sendMu is held.
func (c *conn) reapSend() error {
	for {
		k := int(C.ftvm_poll(c.scq, C.FTVM_POLL_MAX, &c.scomps[0]))
		if k < 0 {
			err := errors.New("verbs: polling the send CQ failed")
			c.fail(err)
			return err
		}
		for i := 0; i < k; i++ {
			w := &c.scomps[i]
			c.outstanding -= int(w.wr_id)
			if w.status != C.IBV_WC_SUCCESS {
				c.fail(fmt.Errorf("verbs: an RDMA WRITE to the peer failed: %s (status %d, vendor error %#x): the peer revoked access, died or is unreachable",
					C.GoString(C.ibv_wc_status_str(uint32(w.status))), int(w.status), uint32(w.vendor_err)))
			}
		}
		if c.outstanding < 0 {
			c.outstanding = 0
		}
		if k < C.FTVM_POLL_MAX {
			return c.Err()
		}
	}
}

// fail records err as the link's failure unless one is recorded already.
func (c *conn) fail(err error) { c.failure.CompareAndSwap(nil, &err) }

func (c *conn) usable() error {
	if c.closed.Load() {
		return ErrClosed
	}
	if !c.connected.Load() {
		return errors.New("verbs: endpoint not connected: call Connect first")
	}
	return c.Err()
}

// Poll appends to imms, within its capacity, the imms that arrived, from
// ibv_poll_cq (no system call), and replenishes the receives they used.
func (c *conn) Poll(imms []uint32) (int, error) {
	c.pollMu.Lock()
	defer c.pollMu.Unlock()
	if c.closed.Load() {
		return 0, ErrClosed
	}
	room := cap(imms) - len(imms)
	out := imms[len(imms):cap(imms)]
	n := copy(out, c.pending)
	c.pending = c.pending[:copy(c.pending, c.pending[n:])]
	for n < room {
		got, err := c.pollRecv(out[n:])
		n += got
		if err != nil || got == 0 {
			break
		}
	}
	if n == 0 {
		if err := c.Err(); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// pollRecv polls the receive CQ once into out; pollMu is held.
func (c *conn) pollRecv(out []uint32) (int, error) {
	if len(out) == 0 {
		return 0, nil
	}
	k := int(C.ftvm_poll(c.rcq, C.int(min(len(out), C.FTVM_POLL_MAX)), &c.rcomps[0]))
	if k < 0 {
		err := errors.New("verbs: polling the receive CQ failed")
		c.fail(err)
		return 0, err
	}
	n := 0
	for i := 0; i < k; i++ {
		w := &c.rcomps[i]
		if w.status != C.IBV_WC_SUCCESS {
			if c.revokedNow() {
				c.fail(ErrRevoked)
			} else {
				c.fail(fmt.Errorf("verbs: the link failed: %s (status %d): the peer died, or wrote outside its rights",
					C.GoString(C.ibv_wc_status_str(uint32(w.status))), int(w.status)))
			}
			continue
		}
		c.recvConsumed++
		if w.has_imm != 0 {
			out[n] = uint32(w.imm)
			n++
		}
	}
	if c.recvConsumed >= recvBatch && c.failure.Load() == nil {
		if err := c.postRecvs(c.recvConsumed); err != nil {
			c.fail(err)
			return n, err
		}
		c.recvConsumed = 0
	}
	return n, nil
}

func (c *conn) revokedNow() bool {
	c.revokeMu.Lock()
	defer c.revokeMu.Unlock()
	return c.revoked
}

// Wait arms the receive CQ's notification, polls once more (an imm that
// came before the arming raises no event), and then sleeps on the
// completion channel's fd until an event, Close, or timeout.
func (c *conn) Wait(timeout time.Duration) error {
	c.pollMu.Lock()
	defer c.pollMu.Unlock()
	if c.closed.Load() {
		return ErrClosed
	}
	if err := c.Err(); err != nil {
		return err
	}
	if len(c.pending) > 0 {
		return nil
	}
	if r := C.ftvm_req_notify(c.rcq); r != 0 {
		err := fmt.Errorf("verbs: arming the receive CQ: %w", syscall.Errno(r))
		c.fail(err)
		return err
	}
	var buf [C.FTVM_POLL_MAX]uint32
	n, err := c.pollRecv(buf[:])
	c.pending = append(c.pending, buf[:n]...)
	if n > 0 || err != nil {
		return err
	}
	if c.failure.Load() != nil {
		return c.Err()
	}
	fds := []unix.PollFd{{Fd: int32(c.ch.fd), Events: unix.POLLIN}, {Fd: int32(c.wakeFd), Events: unix.POLLIN}}
	ts := unix.NsecToTimespec(max(timeout, 0).Nanoseconds())
	if _, err := unix.Ppoll(fds, &ts, nil); err != nil && err != unix.EINTR {
		return fmt.Errorf("verbs: waiting on the completion channel: %w", err)
	}
	if fds[0].Revents != 0 {
		for C.ftvm_get_event(c.ch) == 0 {
			c.unackedEv++
		}
		if c.unackedEv >= ackEventsEvery {
			C.ibv_ack_cq_events(c.rcq, C.uint(c.unackedEv))
			c.unackedEv = 0
		}
	}
	if c.closed.Load() {
		return ErrClosed
	}
	return nil
}

// Revoke deregisters the region's MR, so the rkey the peer holds is dead:
// the peer's next WRITE is answered with a remote access error (which
// moves both QPs to the error state) and nothing lands. It does not move
// the QP to the error state itself: a QP in that state drops the peer's
// packets silently, and rxe's stale peer then never learns (its WRITE had
// not failed 30 s later in the kvmbox), while the NAK reaches it within a
// millisecond. The QP goes with Close.
func (c *conn) Revoke() error {
	c.revokeMu.Lock()
	defer c.revokeMu.Unlock()
	if c.revoked || c.closed.Load() {
		return nil
	}
	c.revoked = true
	c.fail(ErrRevoked)
	if c.mr != nil {
		r := C.ibv_dereg_mr(c.mr)
		c.mr = nil
		if r != 0 {
			return fmt.Errorf("verbs: deregistering the region: %w", syscall.Errno(r))
		}
	}
	return nil
}

// Err reports the link's failure: a failed WRITE (reaped from the send CQ
// here if the writer is not busy), an error completion, or Revoke.
func (c *conn) Err() error {
	if p := c.failure.Load(); p != nil {
		return *p
	}
	if c.connected.Load() && !c.closed.Load() && c.sendMu.TryLock() {
		defer c.sendMu.Unlock()
		if !c.closed.Load() {
			c.reapSendQuiet()
		}
	}
	if p := c.failure.Load(); p != nil {
		return *p
	}
	return nil
}

// reapSendQuiet is reapSend without the final Err, for Err itself.
func (c *conn) reapSendQuiet() {
	k := int(C.ftvm_poll(c.scq, C.FTVM_POLL_MAX, &c.scomps[0]))
	for i := 0; i < k; i++ {
		w := &c.scomps[i]
		c.outstanding -= int(w.wr_id)
		if w.status != C.IBV_WC_SUCCESS {
			c.fail(fmt.Errorf("verbs: an RDMA WRITE to the peer failed: %s (status %d, vendor error %#x): the peer revoked access, died or is unreachable",
				C.GoString(C.ibv_wc_status_str(uint32(w.status))), int(w.status), uint32(w.vendor_err)))
		}
	}
	if c.outstanding < 0 {
		c.outstanding = 0
	}
}

// Close tears everything down once; a Wait in progress returns ErrClosed.
func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		if c.wakeFd >= 0 {
			var one [8]byte
			binary.LittleEndian.PutUint64(one[:], 1)
			unix.Write(c.wakeFd, one[:])
		}
		c.pollMu.Lock()
		c.sendMu.Lock()
		c.revokeMu.Lock()
		c.destroy()
		c.revokeMu.Unlock()
		c.sendMu.Unlock()
		c.pollMu.Unlock()
	})
	return nil
}

// destroy frees what exists, in the order verbs requires: QP before its
// CQs, events acknowledged before their CQ, CQs before their channel, MRs
// before the memory and the PD.
func (c *conn) destroy() {
	if c.qp != nil {
		C.ibv_destroy_qp(c.qp)
		c.qp = nil
	}
	if c.rcq != nil {
		if c.unackedEv > 0 {
			C.ibv_ack_cq_events(c.rcq, C.uint(c.unackedEv))
			c.unackedEv = 0
		}
		C.ibv_destroy_cq(c.rcq)
		c.rcq = nil
	}
	if c.scq != nil {
		C.ibv_destroy_cq(c.scq)
		c.scq = nil
	}
	if c.ch != nil {
		C.ibv_destroy_comp_channel(c.ch)
		c.ch = nil
	}
	if c.mr != nil {
		C.ibv_dereg_mr(c.mr)
		c.mr = nil
	}
	if c.smr != nil {
		C.ibv_dereg_mr(c.smr)
		c.smr = nil
	}
	if c.local != nil {
		unix.Munmap(c.local)
		c.local = nil
	}
	if c.staging != nil {
		unix.Munmap(c.staging)
		c.staging = nil
	}
	if c.pd != nil {
		C.ibv_dealloc_pd(c.pd)
		c.pd = nil
	}
	if c.wakeFd >= 0 {
		unix.Close(c.wakeFd)
		c.wakeFd = -1
	}
	c.p.release()
}
