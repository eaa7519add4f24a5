package tcpfallback

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// The watchdog decides whether the peer is alive and sends the heartbeats
// that tell the peer this side is. Both jobs run on watchdogThreads
// goroutines for the whole process, each locked to an OS thread of its
// own, pinned to its own CPU and raised to SCHED_FIFO where the process
// may (root or CAP_SYS_NICE): on a host whose cores are shared, a thread of
// normal priority can wait for a core for tens of milliseconds, and a
// heartbeat that waits as long looks like a dead host to the peer; and a
// CPU of a virtual machine can itself be held by the hypervisor for 20-50
// ms while the other runs (seen on the 2-core PVM machines: a thread
// asleep on it is not woken, its timer does not fire), so each thread
// sends heartbeats and counts silence on its own, and either keeps the
// peer informed while the other's CPU is held. It sleeps in
// nanosleep(2), not on a Go timer, so that its wake-up does not wait for one
// of the process's normal threads to run the timer, and it sleeps without
// letting go of its P (Go's processor: see sleepUntil), so that on waking
// it need not wait for one: in a process whose Ps are all busy (a
// checkpoint being restored) a goroutine that gave its P up waited 13 ms
// for one, and its peer took that for a death. The process should run
// with one P more than it otherwise would (the daemon does).
//
// What counts as alive, per lane: any byte the lane's reader read since the
// last look, and bytes waiting unread in the lane's socket (SIOCINQ) that
// were not there before (a reader that is starved or busy in OnFrame is not
// a dead peer). The peer is silent only while every connected lane is; a
// lane is declared dead when it and the whole peer have been silent for
// HeartbeatTimeout, or it alone for laneAloneTimeouts times that.
//
// Silence is counted in watchdog time, not in wall time: each look adds the
// time since the previous one, but at most watchdogCreditTicks tick periods.
// A watchdog that was itself not run (the host paused this process or the
// whole machine) therefore measures silence from its own resumption and
// never declares a peer dead for a gap it did not watch: after a pause of
// the whole machine both sides resume, hear each other within a heartbeat
// interval, and neither takes over. A peer that is really gone is declared
// dead after HeartbeatTimeout of watched silence, however late the
// watchdog's ticks come.

// watchdogTicksPerInterval: the watchdog looks at each lane this many
// times per heartbeat interval.
const watchdogTicksPerInterval = 2

// watchdogCreditTicks: one look adds at most this many tick periods to a
// lane's silence, whatever time passed since the previous look.
const watchdogCreditTicks = 2

// laneAloneTimeouts: a lane silent for this many heartbeat timeouts is
// declared dead even while the other lane hears the peer (its connection
// alone is broken).
const laneAloneTimeouts = 4

// watchdogRealtimePriority is the watchdog thread's SCHED_FIFO priority:
// low among real-time threads (the kernel's own run at 50 and above), above
// every normal one.
const watchdogRealtimePriority = 10

// LivenessBucketEdges are the upper edges of the buckets of
// LivenessStats' histograms; the last bucket holds what is above the last
// edge.
var LivenessBucketEdges = [...]time.Duration{
	time.Millisecond, 2 * time.Millisecond, 5 * time.Millisecond, 10 * time.Millisecond,
	20 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond,
	500 * time.Millisecond,
}

// LivenessHistogram counts durations by LivenessBucketEdges.
type LivenessHistogram [len(LivenessBucketEdges) + 1]uint64

func (h *LivenessHistogram) add(d time.Duration) {
	i := 0
	for i < len(LivenessBucketEdges) && d > LivenessBucketEdges[i] {
		i++
	}
	h[i]++
}

// Above counts the durations in buckets whose lower edge is at least d.
func (h LivenessHistogram) Above(d time.Duration) uint64 {
	var n uint64
	for i := range h {
		if i > 0 && LivenessBucketEdges[i-1] >= d {
			n += h[i]
		}
	}
	return n
}

// String renders the non-empty buckets as "≤1ms:120 ≤2ms:4 >500ms:1".
func (h LivenessHistogram) String() string {
	s := ""
	for i, n := range h {
		if n == 0 {
			continue
		}
		if s != "" {
			s += " "
		}
		if i < len(LivenessBucketEdges) {
			s += fmt.Sprintf("≤%v:%d", LivenessBucketEdges[i], n)
		} else {
			s += fmt.Sprintf(">%v:%d", LivenessBucketEdges[i-1], n)
		}
	}
	return s
}

// LivenessStats is what the watchdog saw: how long the peer was silent on
// a lane before the watchdog heard it again (counted as it decides, so in
// watchdog time), and how long the watchdog's own looks were apart (a gap
// well above the tick period: this process was not run). Together they
// tell a peer that was not run from a host that was not: a silence the
// watchdog counted whole while its own looks came on time was the peer's
// (or the network's).
type LivenessStats struct {
	// Realtime: the watchdog thread (one for the process) runs at
	// SCHED_FIFO; RealtimeError says why not, when it does not.
	Realtime      bool
	RealtimeError string
	// Tick is the period the watchdog looks at the lanes with.
	Tick time.Duration
	// PeerSilence counts the silences on each lane that ended (the lane
	// heard again, or was declared dead), as counted; PeerSilenceMax is
	// the longest.
	PeerSilence    LivenessHistogram
	PeerSilenceMax time.Duration
	// OwnGap counts the intervals between the watchdog's looks; OwnGapMax
	// is the longest. OwnStalls counts the looks that came more than
	// watchdogCreditTicks periods after the previous one: time the
	// watchdog was not run and did not count as silence.
	OwnGap    LivenessHistogram
	OwnGapMax time.Duration
	OwnStalls uint64
	// DeclaredDead counts lanes the watchdog declared dead.
	DeclaredDead uint64
}

// WatchdogEvent is what Config.OnWatchdog is told.
type WatchdogEvent uint8

const (
	WatchdogStarted WatchdogEvent = iota + 1
	WatchdogLook
	WatchdogStopped
)

// watchdogThreadsMax bounds the watchdog threads: one a CPU, at most two.
const watchdogThreadsMax = 2

// watchdogState is the watchdog's statistics for a transport. Each thread
// keeps its own, touched by nobody else, and after each look publishes a
// copy for Liveness, if no reader holds the copy at that moment: a
// watchdog thread never waits for a lock a thread of normal priority may
// hold. A reader that is not run while it holds one (ftvm status asking,
// its thread preempted by the watchdog's own wake-up and left behind busy
// threads, which on a loaded 2-core host lasts 100 ms or more) used to
// stop both threads' heartbeats for as long, and the peer took this host
// for dead (TestHeldStatisticsDoNotStopHeartbeats).
type watchdogState struct {
	tick   atomic.Int64 // the look period, for Liveness
	thread [watchdogThreadsMax]threadStats
}

// threadStats is one watchdog thread's statistics of a transport.
type threadStats struct {
	own   LivenessStats // the thread's own: only the thread touches it
	pubMu sync.Mutex    // taken by readers, and by the thread only with TryLock
	pub   LivenessStats // own as last published, under pubMu
}

// publish copies the thread's statistics to where Liveness reads them,
// unless a reader holds them now (the next look publishes them then).
func (s *threadStats) publish() {
	if s.pubMu.TryLock() {
		s.pub = s.own
		s.pubMu.Unlock()
	}
}

// raiseToRealtime puts the calling thread in SCHED_FIFO. The caller has
// locked its goroutine to the thread and never unlocks it, so that the
// thread ends with the goroutine and its priority never serves another.
func raiseToRealtime() error {
	attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_FIFO, Priority: watchdogRealtimePriority}
	if err := unix.SchedSetAttr(0, &attr, 0); err != nil {
		return fmt.Errorf("sched_setattr SCHED_FIFO %d: %w (the watchdog runs at normal priority: give the process CAP_SYS_NICE or run it as root for heartbeats that a loaded host does not delay)", watchdogRealtimePriority, err)
	}
	return nil
}

// watchdogCPUs returns the CPUs the watchdog threads are pinned to: the
// first watchdogThreadsMax of those the process may run on (none to pin
// to when it cannot tell: one thread, unpinned).
func watchdogCPUs() []int {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return []int{-1}
	}
	var cpus []int
	for i := 0; i < 1024 && len(cpus) < watchdogThreadsMax; i++ {
		if set.IsSet(i) {
			cpus = append(cpus, i)
		}
	}
	if len(cpus) == 0 {
		return []int{-1}
	}
	return cpus
}

// watchdogs is the process's watchdog threads and the transports they
// watch. One set for all: each thread holds a P while it sleeps (see
// sleepUntil), and a process with two transports (a secondary's dialer
// and listener) must not lose two for each.
var watchdogs struct {
	mu      sync.Mutex
	set     map[*Transport]struct{}
	threads int           // the number the running threads were started with; 0 if none run
	running int           // threads running
	wake    chan struct{} // a transport joined: look at the schedule again (one token a thread)
	// Each thread's priority once tried: "" (real-time) or why not.
	rtErr []string
	cpus  []int
	// snap is what the threads read on each round instead of taking mu
	// (see watchdogState for why they take no lock others hold),
	// published under mu whenever what it copies changes.
	snap atomic.Pointer[watchSnap]
}

// watchSnap is what a watchdog thread needs of the watchdogs' state.
type watchSnap struct {
	ts       []*Transport
	threads  int
	realtime bool
	rtErr    string
}

// publishLocked makes the threads' snapshot; watchdogs.mu must be held.
func publishLocked() {
	w := &watchdogs
	s := &watchSnap{threads: w.threads, realtime: true}
	for t := range w.set {
		s.ts = append(s.ts, t)
	}
	for _, e := range w.rtErr {
		if e != "" {
			s.realtime, s.rtErr = false, e
		}
	}
	w.snap.Store(s)
}

// watchdogHoldsP: the watchdog threads keep their P while they sleep only
// where the process has more Ps than CPUs (the daemon raises GOMAXPROCS
// for them), so that they never take the few a process of default
// settings has.
func watchdogHoldsP() bool { return runtime.GOMAXPROCS(0) > runtime.NumCPU() }

// watchState is a transport's part of the watchdog's schedule, one a
// thread; wmu is held while that thread looks at the transport, so that
// Close can wait for a look to end (the thread only tries it: a transport
// whose wmu it cannot have is being stopped, and stopped says so to the
// looks that come after).
type watchState struct {
	tick    time.Duration
	stopped atomic.Bool
	thread  [watchdogThreadsMax]struct {
		wmu        sync.Mutex
		prev, next time.Time
	}
}

// startWatchdog adds t to the watchdog's transports, starting the
// watchdog's threads if they are not running.
func (t *Transport) startWatchdog() {
	now := time.Now()
	t.watch.tick = t.cfg.HeartbeatInterval / watchdogTicksPerInterval
	t.watch.stopped.Store(false)
	for k := range t.watch.thread {
		// The threads look in turn, not together, so that their looks
		// and heartbeats spread over the tick.
		th := &t.watch.thread[k]
		th.prev, th.next = now, now.Add(t.watch.tick+time.Duration(k)*t.watch.tick/watchdogThreadsMax)
	}
	t.watchdog.tick.Store(int64(t.watch.tick))
	if t.cfg.OnWatchdog != nil {
		t.cfg.OnWatchdog(WatchdogStarted)
	}
	w := &watchdogs
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.set == nil {
		w.set = make(map[*Transport]struct{})
		w.cpus = watchdogCPUs()
		w.wake = make(chan struct{}, watchdogThreadsMax)
		w.rtErr = make([]string, len(w.cpus))
	}
	w.set[t] = struct{}{}
	publishLocked()
	for range w.running {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
	if w.running == 0 {
		w.threads = len(w.cpus)
		publishLocked()
		for k := range w.cpus {
			w.running++
			go runWatchdog(k)
		}
	}
}

// stopWatchdog takes t off the watchdog's transports and returns once no
// look at t is under way.
func (t *Transport) stopWatchdog() {
	w := &watchdogs
	w.mu.Lock()
	_, ok := w.set[t]
	delete(w.set, t)
	publishLocked()
	w.mu.Unlock()
	if !ok {
		return
	}
	t.watch.stopped.Store(true)
	for k := range t.watch.thread {
		t.watch.thread[k].wmu.Lock()
		t.watch.thread[k].wmu.Unlock()
	}
	if t.cfg.OnWatchdog != nil {
		t.cfg.OnWatchdog(WatchdogStopped)
	}
}

// runWatchdog is watchdog thread k.
func runWatchdog(k int) {
	// Locked for good: the thread exits with this goroutine, and its
	// real-time priority and its CPU with it.
	runtime.LockOSThread()
	w := &watchdogs
	w.mu.Lock()
	var errs []string
	if cpu := w.cpus[k]; cpu >= 0 {
		var set unix.CPUSet
		set.Set(cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			errs = append(errs, fmt.Sprintf("pinning to CPU %d: %v", cpu, err))
		}
	}
	if err := raiseToRealtime(); err != nil {
		errs = append(errs, err.Error())
	}
	w.rtErr[k] = ""
	if len(errs) > 0 {
		w.rtErr[k] = fmt.Sprintf("watchdog thread %d: %s", k, errs)
	}
	publishLocked()
	w.mu.Unlock()
	for {
		s := w.snap.Load()
		if len(s.ts) == 0 {
			w.mu.Lock()
			if len(w.set) == 0 {
				w.running--
				w.mu.Unlock()
				return
			}
			w.mu.Unlock()
			continue // a transport came meanwhile: the snapshot has it now
		}
		ts, threads, realtime, rtErr := s.ts, s.threads, s.realtime, s.rtErr
		// The clock now, not the time the look was due: a byte that
		// arrived while the look was late was heard at most now.
		now := time.Now()
		next := now.Add(time.Hour)
		watching := false
		for _, t := range ts {
			th := &t.watch.thread[k]
			if !th.wmu.TryLock() {
				continue // stopWatchdog has it: t is leaving
			}
			if t.watch.stopped.Load() {
				th.wmu.Unlock()
				continue
			}
			if !now.Before(th.next) {
				gap := now.Sub(th.prev)
				th.prev = now
				if th.next = th.next.Add(t.watch.tick); th.next.Before(now) {
					th.next = now.Add(t.watch.tick) // late: do not run the missed looks back to back
				}
				if t.cfg.OnWatchdog != nil {
					t.cfg.OnWatchdog(WatchdogLook)
				}
				t.look(k, threads, now, gap, min(gap, watchdogCreditTicks*t.watch.tick), realtime, rtErr)
			}
			if th.next.Before(next) {
				next = th.next
			}
			watching = watching || t.lanes[LaneControl].cur.Load() != nil || t.lanes[LaneBulk].cur.Load() != nil
			th.wmu.Unlock()
		}
		if watching && watchdogHoldsP() {
			sleepUntil(next)
			continue
		}
		// No peer to watch (a secondary's listener until it goes live),
		// or no P to spare: sleep the ordinary way, P given up.
		tm := time.NewTimer(time.Until(next))
		select {
		case <-w.wake:
		case <-tm.C:
		}
		tm.Stop()
	}
}

// laneWatch is watchdog thread k's state of one connection.
type laneWatch struct {
	heard     atomic.Bool   // bytes arrived since this thread last looked
	sent      atomic.Bool   // a frame left since this thread last looked
	silence   time.Duration // watched silence since the lane was last heard
	unread    int           // bytes waiting in the socket at the last look
	idleTicks int
	inqN      int              // SIOCINQ's answer, for inqFn
	inqFn     func(fd uintptr) // made once per connection: a look allocates nothing
}

// markHeard and markSent tell every watchdog thread.
func (c *laneConn) markHeard() {
	for k := range c.watch {
		c.watch[k].heard.Store(true)
	}
}

func (c *laneConn) markSent() {
	for k := range c.watch {
		c.watch[k].sent.Store(true)
	}
}

// look is watchdog thread k's look at every lane of t: who was heard, who
// is dead, who needs a heartbeat. Each of the threads threads sends
// heartbeats every threads intervals, so that together they send one an
// interval, and either alone one in threads intervals.
func (t *Transport) look(k, threads int, now time.Time, gap, credit time.Duration, realtime bool, rtErr string) {
	timeout := t.HeartbeatTimeout()
	var conns [LaneCount]*laneConn
	var ended [LaneCount]time.Duration // silences that ended at this look
	peerSilence := time.Duration(-1)
	for i, l := range t.lanes {
		c := l.cur.Load()
		if c == nil {
			continue
		}
		conns[i] = c
		lw := &c.watch[k]
		if lw.heard.Swap(false) || c.unreadGrew(lw) {
			ended[i] = lw.silence
			lw.silence = 0
		} else {
			lw.silence += credit
		}
		if peerSilence < 0 || lw.silence < peerSilence {
			peerSilence = lw.silence
		}
	}
	var dead [LaneCount]bool
	ts := &t.watchdog.thread[k]
	st := &ts.own
	st.Realtime, st.RealtimeError = realtime, rtErr
	st.Tick = t.watch.tick
	st.OwnGap.add(gap)
	st.OwnGapMax = max(st.OwnGapMax, gap)
	if gap > watchdogCreditTicks*st.Tick {
		st.OwnStalls++
	}
	for i, c := range conns {
		if c == nil {
			continue
		}
		lw := &c.watch[k]
		if ended[i] > 0 {
			st.PeerSilence.add(ended[i])
			st.PeerSilenceMax = max(st.PeerSilenceMax, ended[i])
		}
		if lw.silence > timeout && (peerSilence > timeout || lw.silence > laneAloneTimeouts*timeout) {
			dead[i] = true
			st.DeclaredDead++
			st.PeerSilence.add(lw.silence)
			st.PeerSilenceMax = max(st.PeerSilenceMax, lw.silence)
		}
	}
	ts.publish()
	for i, c := range conns {
		if c == nil {
			continue
		}
		l := t.lanes[i]
		if dead[i] {
			l.stats.heartbeatTimeouts.Add(1)
			c.fail(&HeartbeatTimeoutError{Lane: l.id, Peer: c.peer, Silent: c.watch[k].silence, Timeout: timeout})
			continue
		}
		l.heartbeat(c, &c.watch[k], threads)
	}
}

// unreadGrew reports whether more bytes wait unread in the connection's
// socket than at thread lw's last look (SIOCINQ): the peer sent them,
// though the reader has not read them yet.
func (c *laneConn) unreadGrew(lw *laneWatch) bool {
	lw.inqN = -1
	_ = c.rc.Control(lw.inqFn)
	grew := lw.inqN > lw.unread
	lw.unread = max(lw.inqN, 0)
	return grew
}

// heartbeat sends a heartbeat on c if nothing left it for threads
// intervals (of this thread's looks). It never waits: a writer holding
// the lane is sending, which is as good as a heartbeat, and a socket with
// no room means a peer that does not read, which its own watchdog sees as
// bytes waiting.
func (l *lane) heartbeat(c *laneConn, lw *laneWatch, threads int) {
	if lw.sent.Swap(false) {
		lw.idleTicks = 0
		return
	}
	lw.idleTicks++
	if lw.idleTicks < watchdogTicksPerInterval*threads {
		return
	}
	if !l.wmu.TryLock() {
		return
	}
	l.heartbeating.Store(true)
	var err error
	sent := false
	if l.cur.Load() == c && c.roomFor(HeaderBytes) {
		err = c.writeFrame(TypeHeartbeat, 0, nil)
		sent = err == nil
	}
	l.heartbeating.Store(false)
	l.wmu.Unlock()
	if err != nil {
		c.fail(fmt.Errorf("tcpfallback: %s lane: sending heartbeat to %s: %w", l.id, c.peer, c.writeError(err)))
		return
	}
	if !sent {
		return
	}
	lw.idleTicks = 0
	l.stats.heartbeatsSent.Add(1)
	l.stats.framesSent.Add(1)
	l.stats.bytesSent.Add(HeaderBytes)
}

// HeartbeatTimeout is the heartbeat timeout in force (Config's, unless
// SetHeartbeatTimeout changed it).
func (t *Transport) HeartbeatTimeout() time.Duration {
	if d := time.Duration(t.hbTimeout.Load()); d > 0 {
		return d
	}
	return t.cfg.HeartbeatTimeout
}

// SetHeartbeatTimeout changes the heartbeat timeout from the watchdog's
// next look on; zero goes back to Config.HeartbeatTimeout. A timeout
// under two heartbeat intervals is raised to two. The daemon waits longer
// while a secondary joins (restoring a checkpoint keeps a process busier
// than anything in step does) than once it is in step.
func (t *Transport) SetHeartbeatTimeout(d time.Duration) {
	if d != 0 {
		d = max(d, minHeartbeatTimeoutIntervals*t.cfg.HeartbeatInterval)
	}
	t.hbTimeout.Store(int64(d))
}

// Liveness returns a snapshot of what the watchdog saw: its threads'
// statistics as each last published them, added up. Realtime holds once
// a thread has looked and while every thread that looked runs real-time.
func (t *Transport) Liveness() LivenessStats {
	out := LivenessStats{Tick: time.Duration(t.watchdog.tick.Load())}
	looked := false
	for k := range t.watchdog.thread {
		ts := &t.watchdog.thread[k]
		ts.pubMu.Lock()
		s := ts.pub
		ts.pubMu.Unlock()
		if s.Tick == 0 {
			continue // this thread has not looked at t yet
		}
		if !looked {
			out.Realtime, looked = true, true
		}
		if !s.Realtime {
			out.Realtime = false
			if out.RealtimeError == "" {
				out.RealtimeError = s.RealtimeError
			}
		}
		for i := range out.PeerSilence {
			out.PeerSilence[i] += s.PeerSilence[i]
			out.OwnGap[i] += s.OwnGap[i]
		}
		out.PeerSilenceMax = max(out.PeerSilenceMax, s.PeerSilenceMax)
		out.OwnGapMax = max(out.OwnGapMax, s.OwnGapMax)
		out.OwnStalls += s.OwnStalls
		out.DeclaredDead += s.DeclaredDead
	}
	return out
}
