// SPDX-License-Identifier: GPL-2.0
//
// The eBPF side of ftvm probe: where an output of a primary ftvm daemon
// spends its hold, timed in the kernel and kept as histograms in maps.
//
// An output's path, and the hook that marks each point of it:
//
//   vCPU exits to user space        tracepoint kvm:kvm_userspace_exit
//   the output is held              uprobe agent.probeOutputHeld(id)
//   log records are sent            tracepoint sock:sock_send_length (TCP),
//                                   on the vCPU thread
//   an acknowledgement arrives      uprobe agent.probeAckReceived(pos)
//   it is released to its backend   uprobe agent.probeOutputReleased(id, nic)
//   a NIC frame enters the TAP      tracepoint syscalls:sys_enter_write on
//                                   the TAP's file descriptor
//
// In receipt mode an output waits for the acknowledgement of the log
// entries before it, not of its own record: those went out in earlier
// exits, so the round trip it waits on began before its hold. The probe
// takes the vCPU thread's last record write before the hold as that
// round trip's start, and the acknowledgement stepped just before the
// release (on the releasing thread) as its end.
//
// and, for every thread of the daemon (and of its peer, when one is
// given), the time from being made runnable (sched_wakeup, or preempted
// while running) to running again (sched_switch): waiting for a CPU told
// apart from waiting for the peer. Roles are learnt from the hooks: the
// thread that exits KVM_RUN is the vCPU, the one that steps an
// acknowledgement a lane reader, the one that enters Agent.process the
// loop (goroutines move between threads, so a role is the one a thread
// had last).
//
// Uprobes are at function entry only: Go moves goroutine stacks, and a
// uretprobe's rewritten return address would be copied with them. Go's
// internal ABI passes the first integer arguments in RAX and RBX.
//
// Histograms: log2 buckets of nanoseconds with 8 linear sub-buckets each
// (a bucket is at most 12.5% wide), folded into hdrhistogram by user
// space (bench/probe/hist.go, which must agree with bucket_of below).

#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

// The process whose outputs are timed (its tgid) and, when non-zero, its
// peer daemon on this machine (a secondary in a lab), whose turnaround
// and run-queue delays are timed too. Set by the loader.
const volatile __u32 target_tgid = 0;
const volatile __u32 peer_tgid = 0;

enum stage {
	STAGE_HOLD,            // held → released (what the daemon reports)
	STAGE_EXIT_HELD,       // vCPU exit to user space → held
	STAGE_HELD_ACK,        // held → the acknowledgement that released it
	STAGE_ACK_RELEASE,     // that acknowledgement → released
	STAGE_SEND_ACK,        // the last record write before the hold → that
	                       // acknowledgement: the round trip waited on
	STAGE_RELEASE_TAP,     // released (a NIC frame) → written into the TAP
	STAGE_PEER_TURNAROUND, // peer: its last transport read → its next transport write, same thread
	STAGE_TO_PEER,         // a vCPU record write → the peer's next transport read
	STAGE_FROM_PEER,       // a peer's transport write → the target's next transport read
	STAGE_READ_ACK,        // a reader's last transport read → the acknowledgement
	                       // stepped (TLS, parsing, the agent's lock)
	STAGE_READ_ACK_BLOCKED, // of that, the time the thread was blocked (asleep:
	                        // a lock's or the Go scheduler's wait)
	STAGE_RUNQ_VCPU,
	STAGE_RUNQ_READER,
	STAGE_RUNQ_LOOP,
	STAGE_RUNQ_OTHER,
	STAGE_RUNQ_PEER_VCPU,
	STAGE_RUNQ_PEER_OTHER,
	STAGE_COUNT,
};

enum counter {
	CTR_EXITS,            // vCPU exits to user space
	CTR_HELD,             // outputs held
	CTR_RELEASED,         // outputs released
	CTR_MATCHED,          // released outputs whose hold the probe saw
	CTR_ACKS,             // acknowledgements
	CTR_RELEASED_AT_ONCE, // released with no acknowledgement after the hold:
	                      // what it waited for was acknowledged already
	CTR_TAP_WRITES,       // writes into the TAP
	CTR_TAP_MATCHED,      // of them, matched to a released NIC frame
	CTR_VCPU_SENDS,       // record writes by the vCPU thread
	CTR_PEER_TURNAROUNDS, // peer read → write pairs
	CTR_COUNT,
};

enum role {
	ROLE_OTHER,
	ROLE_VCPU,
	ROLE_READER,
	ROLE_LOOP,
	ROLE_PEER_OTHER,
	ROLE_PEER_VCPU,
};

#define SUB_BITS 3
#define SUB_BUCKETS (1 << SUB_BITS)
#define MAX_LOG2 40 // 2^41 ns, about 37 minutes: longer is clamped
#define BUCKETS (SUB_BUCKETS + SUB_BUCKETS * (MAX_LOG2 - SUB_BITS + 1))

#define TAP_RING 1024
#define IPPROTO_TCP_ 6

struct thread {
	__u64 exit_ts;     // vCPU: last exit to user space
	__u64 send_ts;     // vCPU: last record write to the transport
	__u64 ack_ts;      // reader: last acknowledgement it stepped
	__u64 recv_ts;     // last transport read (the peer: since its last write)
	__u64 runnable_ts; // woken or preempted, not yet running
	__u64 blocked_ts;  // asleep since (0: running or runnable)
	__u64 blocked_ns;  // asleep since its last transport read
	__u32 role;
	__u32 pad;
};

struct held {
	__u64 held_ts;
	__u64 sent_ts; // the vCPU thread's last record write before the hold
};

struct globals {
	__u64 last_ack_ts;
	__u64 to_peer_ts;   // a vCPU record write the peer has not read since (0: none)
	__u64 from_peer_ts; // a peer write the target has not read since (0: none)
	__u64 tap_head; // next released NIC frame to match to a TAP write
	__u64 tap_tail; // next free slot of tap_ring
};

// hist: one histogram a stage (key: enum stage), read by user space in
// one lookup each.
struct histogram {
	__u64 buckets[BUCKETS];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, STAGE_COUNT);
	__type(key, __u32);
	__type(value, struct histogram);
} hist SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CTR_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

// threads: every thread of the target and the peer (user space adds them
// from /proc; the hooks add the ones it has not seen yet).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct thread);
} threads SEC(".maps");

// held_outputs: outputs held and not yet released, by output ID. LRU: an
// output the daemon drops (never releases) must not fill the map.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct held);
} held_outputs SEC(".maps");

// tap_fds: the target's file descriptors open on /dev/net/tun (user space
// fills it from /proc/PID/fd).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u8);
} tap_fds SEC(".maps");

// tap_ring: when each released NIC frame was released, in release order
// (the daemon delivers frames in that order, from whichever thread).
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TAP_RING);
	__type(key, __u32);
	__type(value, __u64);
} tap_ring SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct globals);
} globals SEC(".maps");

// x86-64 struct pt_regs, as a uprobe program's context.
struct regs {
	unsigned long r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di;
	unsigned long orig_ax, ip, cs, flags, sp, ss;
};

// Tracepoint records, from /sys/kernel/tracing/events/*/*/format. Each
// starts with 8 bytes of common fields.
struct tp_kvm_userspace_exit {
	__u64 common;
	__u32 reason;
	__s32 err;
};

struct tp_sock_length {
	__u64 common;
	void *sk;
	__u16 family;
	__u16 protocol;
	__s32 ret;
	__s32 flags;
};

struct tp_sys_enter_write {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__u64 fd;
	__u64 buf;
	__u64 count;
};

struct tp_sched_wakeup {
	__u64 common;
	char comm[16];
	__s32 pid;
	__s32 prio;
	__s32 target_cpu;
};

struct tp_sched_switch {
	__u64 common;
	char prev_comm[16];
	__s32 prev_pid;
	__s32 prev_prio;
	__s64 prev_state;
	char next_comm[16];
	__s32 next_pid;
	__s32 next_prio;
};

static __always_inline __u32 log2_u64(__u64 v)
{
	__u32 r = 0;
	if (v >> 32) { v >>= 32; r += 32; }
	if (v >> 16) { v >>= 16; r += 16; }
	if (v >> 8) { v >>= 8; r += 8; }
	if (v >> 4) { v >>= 4; r += 4; }
	if (v >> 2) { v >>= 2; r += 2; }
	if (v >> 1) { r += 1; }
	return r;
}

// bucket_of: values below 8 ns have a bucket each; above, the power of
// two and the next SUB_BITS bits pick it.
static __always_inline __u32 bucket_of(__u64 ns)
{
	if (ns < SUB_BUCKETS)
		return ns;
	__u32 msb = log2_u64(ns);
	if (msb > MAX_LOG2)
		return BUCKETS - 1;
	__u32 sub = (ns >> (msb - SUB_BITS)) & (SUB_BUCKETS - 1);
	return (msb - SUB_BITS + 1) * SUB_BUCKETS + sub;
}

static __always_inline void observe(enum stage s, __u64 ns)
{
	__u32 key = s;
	struct histogram *h = bpf_map_lookup_elem(&hist, &key);
	__u32 b = bucket_of(ns);
	if (h && b < BUCKETS)
		__sync_fetch_and_add(&h->buckets[b], 1);
}

static __always_inline void count(enum counter c)
{
	__u32 key = c;
	__u64 *n = bpf_map_lookup_elem(&counters, &key);
	if (n)
		__sync_fetch_and_add(n, 1);
}

static __always_inline struct globals *globals_get(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&globals, &zero);
}

static __always_inline __u32 current_tgid(void) { return bpf_get_current_pid_tgid() >> 32; }
static __always_inline __u32 current_tid(void) { return (__u32)bpf_get_current_pid_tgid(); }

// thread_get returns the current thread's state, adding it when missing.
static __always_inline struct thread *thread_get(__u32 tid, __u32 role)
{
	struct thread *t = bpf_map_lookup_elem(&threads, &tid);
	if (t)
		return t;
	struct thread fresh = { .role = role };
	bpf_map_update_elem(&threads, &tid, &fresh, BPF_NOEXIST);
	return bpf_map_lookup_elem(&threads, &tid);
}

SEC("tracepoint/kvm/kvm_userspace_exit")
int kvm_exit(struct tp_kvm_userspace_exit *ctx)
{
	__u32 tgid = current_tgid();
	if (tgid != target_tgid && (peer_tgid == 0 || tgid != peer_tgid))
		return 0;
	if (tgid == peer_tgid) {
		struct thread *t = thread_get(current_tid(), ROLE_PEER_VCPU);
		if (t)
			t->role = ROLE_PEER_VCPU;
		return 0;
	}
	struct thread *t = thread_get(current_tid(), ROLE_VCPU);
	if (!t)
		return 0;
	t->role = ROLE_VCPU;
	t->exit_ts = bpf_ktime_get_ns();
	count(CTR_EXITS);
	return 0;
}

SEC("uprobe/probeOutputHeld")
int output_held(struct regs *ctx)
{
	if (current_tgid() != target_tgid)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	__u64 id = ctx->ax;
	struct held h = { .held_ts = now };
	struct thread *t = thread_get(current_tid(), ROLE_VCPU);
	if (t) {
		if (t->exit_ts && now >= t->exit_ts)
			observe(STAGE_EXIT_HELD, now - t->exit_ts);
		h.sent_ts = t->send_ts;
	}
	bpf_map_update_elem(&held_outputs, &id, &h, BPF_ANY);
	count(CTR_HELD);
	return 0;
}

SEC("uprobe/probeAckReceived")
int ack_received(struct regs *ctx)
{
	if (current_tgid() != target_tgid)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	struct globals *g = globals_get();
	if (g)
		g->last_ack_ts = now;
	struct thread *t = thread_get(current_tid(), ROLE_READER);
	if (t) {
		if (t->recv_ts && now >= t->recv_ts) {
			observe(STAGE_READ_ACK, now - t->recv_ts);
			observe(STAGE_READ_ACK_BLOCKED, t->blocked_ns);
		}
		t->ack_ts = now;
		if (t->role != ROLE_VCPU)
			t->role = ROLE_READER;
	}
	count(CTR_ACKS);
	return 0;
}

SEC("uprobe/probeOutputReleased")
int output_released(struct regs *ctx)
{
	if (current_tgid() != target_tgid)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	__u64 id = ctx->ax;
	__u64 nic = ctx->bx & 0xff;
	struct globals *g = globals_get();
	if (!g)
		return 0;
	count(CTR_RELEASED);
	// A thread that releases outputs without having stepped an
	// acknowledgement is the loop (readers release inline after one).
	__u32 tid = current_tid();
	struct thread *t = thread_get(tid, ROLE_LOOP);
	if (t && t->role == ROLE_OTHER)
		t->role = ROLE_LOOP;
	if (nic) {
		__u64 slot = __sync_fetch_and_add(&g->tap_tail, 1);
		__u32 key = slot % TAP_RING;
		__u64 *ts = bpf_map_lookup_elem(&tap_ring, &key);
		if (ts)
			*ts = now;
	}
	struct held *h = bpf_map_lookup_elem(&held_outputs, &id);
	if (!h)
		return 0;
	count(CTR_MATCHED);
	if (now >= h->held_ts)
		observe(STAGE_HOLD, now - h->held_ts);
	// The acknowledgement that released it: the one this thread stepped
	// last (a reader releases inline), else the last one (the loop
	// released it); none after the hold if it was released at once.
	__u64 ack = 0;
	if (t && t->ack_ts >= h->held_ts && t->ack_ts <= now)
		ack = t->ack_ts;
	else if (g->last_ack_ts >= h->held_ts && g->last_ack_ts <= now)
		ack = g->last_ack_ts;
	if (!ack) {
		count(CTR_RELEASED_AT_ONCE);
	} else {
		observe(STAGE_HELD_ACK, ack - h->held_ts);
		observe(STAGE_ACK_RELEASE, now - ack);
		if (h->sent_ts && ack >= h->sent_ts)
			observe(STAGE_SEND_ACK, ack - h->sent_ts);
	}
	bpf_map_delete_elem(&held_outputs, &id);
	return 0;
}

SEC("tracepoint/sock/sock_send_length")
int sock_send(struct tp_sock_length *ctx)
{
	if (ctx->protocol != IPPROTO_TCP_ || ctx->ret <= 0)
		return 0;
	__u32 tgid = current_tgid();
	if (tgid != target_tgid && (peer_tgid == 0 || tgid != peer_tgid))
		return 0;
	__u32 tid = current_tid();
	struct thread *t = bpf_map_lookup_elem(&threads, &tid);
	if (!t)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	struct globals *g = globals_get();
	if (tgid == peer_tgid) {
		if (g && g->from_peer_ts == 0)
			g->from_peer_ts = now;
		if (t->recv_ts && now >= t->recv_ts) {
			observe(STAGE_PEER_TURNAROUND, now - t->recv_ts);
			count(CTR_PEER_TURNAROUNDS);
		}
		t->recv_ts = 0;
		return 0;
	}
	if (t->role != ROLE_VCPU)
		return 0;
	t->send_ts = now;
	if (g && g->to_peer_ts == 0)
		g->to_peer_ts = now;
	count(CTR_VCPU_SENDS);
	return 0;
}

SEC("tracepoint/sock/sock_recv_length")
int sock_recv(struct tp_sock_length *ctx)
{
	if (peer_tgid == 0 || ctx->protocol != IPPROTO_TCP_ || ctx->ret <= 0)
		return 0;
	__u32 tgid = current_tgid();
	if (tgid != peer_tgid && tgid != target_tgid)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	struct globals *g = globals_get();
	if (!g)
		return 0;
	// One way across the link, from the first write not yet read on
	// the other side (only the peer's threads read the target's
	// records, and only the target's its acknowledgements).
	if (tgid == peer_tgid) {
		__u64 sent = g->to_peer_ts;
		if (sent && now >= sent && __sync_val_compare_and_swap(&g->to_peer_ts, sent, 0) == sent)
			observe(STAGE_TO_PEER, now - sent);
		__u32 tid = current_tid();
		struct thread *t = bpf_map_lookup_elem(&threads, &tid);
		// The last read before a write: a read that brought nothing to
		// answer (a heartbeat) must not start the clock of a later write.
		if (t)
			t->recv_ts = now;
		return 0;
	}
	__u64 sent = g->from_peer_ts;
	if (sent && now >= sent && __sync_val_compare_and_swap(&g->from_peer_ts, sent, 0) == sent)
		observe(STAGE_FROM_PEER, now - sent);
	__u32 tid = current_tid();
	struct thread *t = bpf_map_lookup_elem(&threads, &tid);
	if (t) {
		t->recv_ts = now;
		t->blocked_ns = 0;
	}
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_write")
int tap_write(struct tp_sys_enter_write *ctx)
{
	if (current_tgid() != target_tgid)
		return 0;
	__u32 fd = ctx->fd;
	if (!bpf_map_lookup_elem(&tap_fds, &fd))
		return 0;
	count(CTR_TAP_WRITES);
	struct globals *g = globals_get();
	if (!g)
		return 0;
	__u64 head = g->tap_head, tail = g->tap_tail;
	if (head >= tail)
		return 0; // a frame the daemon sent itself (an ARP)
	if (tail - head > TAP_RING)
		head = tail - TAP_RING; // fell behind: the oldest are overwritten
	__u32 key = head % TAP_RING;
	__u64 *ts = bpf_map_lookup_elem(&tap_ring, &key);
	g->tap_head = head + 1;
	__u64 now = bpf_ktime_get_ns();
	if (ts && *ts && now >= *ts) {
		observe(STAGE_RELEASE_TAP, now - *ts);
		count(CTR_TAP_MATCHED);
	}
	return 0;
}

static __always_inline void runnable(__u32 tid, __u64 now)
{
	struct thread *t = bpf_map_lookup_elem(&threads, &tid);
	if (t && t->runnable_ts == 0)
		t->runnable_ts = now;
}

SEC("tracepoint/sched/sched_wakeup")
int sched_wakeup(struct tp_sched_wakeup *ctx)
{
	runnable(ctx->pid, bpf_ktime_get_ns());
	return 0;
}

SEC("tracepoint/sched/sched_wakeup_new")
int sched_wakeup_new(struct tp_sched_wakeup *ctx)
{
	runnable(ctx->pid, bpf_ktime_get_ns());
	return 0;
}

#define TASK_RUNNING 0

SEC("tracepoint/sched/sched_switch")
int sched_switch(struct tp_sched_switch *ctx)
{
	__u64 now = bpf_ktime_get_ns();
	__u32 prev = ctx->prev_pid;
	struct thread *p = bpf_map_lookup_elem(&threads, &prev);
	if (p) {
		if (ctx->prev_state == TASK_RUNNING) { // preempted: runnable from now
			if (p->runnable_ts == 0)
				p->runnable_ts = now;
		} else {
			p->blocked_ts = now;
		}
	}
	__u32 tid = ctx->next_pid;
	struct thread *t = bpf_map_lookup_elem(&threads, &tid);
	if (!t)
		return 0;
	if (t->blocked_ts && now >= t->blocked_ts) {
		// Woken after sleeping: up to sched_switch, so the run-queue
		// delay is in both; readers' is small next to what this finds.
		t->blocked_ns += now - t->blocked_ts;
		t->blocked_ts = 0;
	}
	if (t->runnable_ts == 0)
		return 0;
	__u64 waited = now - t->runnable_ts;
	t->runnable_ts = 0;
	switch (t->role) {
	case ROLE_VCPU: observe(STAGE_RUNQ_VCPU, waited); break;
	case ROLE_READER: observe(STAGE_RUNQ_READER, waited); break;
	case ROLE_LOOP: observe(STAGE_RUNQ_LOOP, waited); break;
	case ROLE_PEER_VCPU: observe(STAGE_RUNQ_PEER_VCPU, waited); break;
	case ROLE_PEER_OTHER: observe(STAGE_RUNQ_PEER_OTHER, waited); break;
	default: observe(STAGE_RUNQ_OTHER, waited); break;
	}
	return 0;
}
