package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/ftvm/ftvm/agent"
	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/rdma"
	"github.com/ftvm/ftvm/tcpfallback"
	"github.com/ftvm/ftvm/transport"
	"golang.org/x/sys/unix"
)

// peerLink is the agent's Transport: it sends through whichever transport
// reaches the peer now. A secondary sends through the connection it dialed
// to its primary; a primary (and a secondary once it goes live) through
// its listener, to whichever secondary has joined.
type peerLink struct {
	cur atomic.Pointer[rdma.Transport]
	// all returns every transport this host has open (Fence fences
	// each); set before Run.
	all func() []*rdma.Transport
}

var (
	_ agent.Transport = (*peerLink)(nil)
	_ agent.Poller    = (*peerLink)(nil)
	_ agent.Fencer    = (*peerLink)(nil)
)

// Fence implements agent.Fencer: a host that halted (deposed) takes every
// peer's right to write into its rings, the listener's and the dialer's.
func (l *peerLink) Fence() error {
	ts := []*rdma.Transport{l.cur.Load()}
	if l.all != nil {
		ts = l.all()
	}
	var errs []error
	for _, t := range ts {
		if t == nil {
			continue
		}
		if err := t.Fence(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (l *peerLink) set(t *rdma.Transport) { l.cur.Store(t) }

func (l *peerLink) current() *rdma.Transport { return l.cur.Load() }

// Poll implements agent.Poller: the vCPU thread reads what the peer wrote
// into this host's ring at each exit (nothing over TCP).
func (l *peerLink) Poll() int {
	if t := l.cur.Load(); t != nil {
		return t.Poll()
	}
	return 0
}

// Send implements agent.Transport. Before any connection exists it fails
// like a lane that is down; the protocol resends.
func (l *peerLink) Send(typ transport.Type, payload []byte) error {
	t := l.cur.Load()
	if t == nil {
		return fmt.Errorf("%w: not connected to a peer yet", transport.ErrLaneDown)
	}
	return t.Send(typ, payload)
}

// TrySend implements agent.TrySender: the transport's readers send with
// it, so that they never wait for room in a socket.
func (l *peerLink) TrySend(typ transport.Type, payload []byte) error {
	t := l.cur.Load()
	if t == nil {
		return fmt.Errorf("%w: not connected to a peer yet", transport.ErrLaneDown)
	}
	return t.TrySend(typ, payload)
}

var _ agent.TrySender = (*peerLink)(nil)

// SendBatch implements agent.BatchSender: what one Ready sends, in one
// write over TCP.
func (l *peerLink) SendBatch(frames []transport.OutFrame) (int, error) {
	t := l.cur.Load()
	if t == nil {
		return 0, fmt.Errorf("%w: not connected to a peer yet", transport.ErrLaneDown)
	}
	return t.SendBatch(frames)
}

// TrySendBatch implements agent.BatchSender for the transport's readers.
func (l *peerLink) TrySendBatch(frames []transport.OutFrame) (int, error) {
	t := l.cur.Load()
	if t == nil {
		return 0, fmt.Errorf("%w: not connected to a peer yet", transport.ErrLaneDown)
	}
	return t.TrySendBatch(frames)
}

var _ agent.BatchSender = (*peerLink)(nil)

// frameSource is the transport a frame reached the agent through
// (agent.LaneDropper), set once rdma.Listen or rdma.Dial returned; a
// frame before that drops nothing (the agent still counts and logs it).
type frameSource struct {
	tr atomic.Pointer[rdma.Transport]
}

var _ agent.LaneDropper = (*frameSource)(nil)

func (s *frameSource) set(t *rdma.Transport) {
	if t != nil {
		s.tr.Store(t)
	}
}

// DropLane implements agent.LaneDropper.
func (s *frameSource) DropLane(l transport.Lane, err error) string {
	if t := s.tr.Load(); t != nil {
		return t.DropLane(l, err)
	}
	return ""
}

// gratuitousARP is the frame a new primary sends so that switches learn the
// VM's MAC on its port and neighbours refresh their caches: a broadcast
// ARP request from mac asking for ip, which ip itself answers for (sender
// and target protocol address both ip, RFC 5227 section 3).
func gratuitousARP(mac [6]byte, ip [4]byte) []byte {
	f := make([]byte, 42)
	copy(f[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(f[6:12], mac[:])
	binary.BigEndian.PutUint16(f[12:], 0x0806) // ARP
	a := f[14:]
	binary.BigEndian.PutUint16(a[0:], 1)      // Ethernet
	binary.BigEndian.PutUint16(a[2:], 0x0800) // IPv4
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], 1) // request
	copy(a[8:14], mac[:])
	copy(a[14:18], ip[:])
	// target hardware address stays zero
	copy(a[24:28], ip[:])
	return f
}

// setLinkUp sets IFF_UP on the interface name (in this process's network
// namespace), as `ip link set NAME up` does.
func setLinkUp(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("SIOCGIFFLAGS: %w", err)
	}
	flags := ifr.Uint16()
	if flags&unix.IFF_UP != 0 {
		return nil
	}
	ifr.SetUint16(flags | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("SIOCSIFFLAGS: %w", err)
	}
	return nil
}

// announceSchedule is when a host that starts serving the VM (a primary at
// start, a secondary at go-live) announces the VM's MAC, counted from
// then: twice at once, in case the first meets a switch port still coming
// up, then every announceDenseEvery for the first announceDenseFor, then
// less and less often over the first seconds, as VRRP implementations
// do. A frame the old primary still sent after the first announcement (it
// woke up from a stall before it learnt it was deposed) moves the VM's
// address back to its port on the switch; the next announcement moves it
// here again, so such a frame costs the clients at most the gap to the
// next one, not the life of their ARP entries. This host sees such a
// frame only when the switch floods it (staleFrameSeen); a unicast one
// goes to its destination alone, hence the dense start: an old primary
// wakes within the first half second of its successor's life when it
// stalled for not much more than the heartbeat timeout, and the freeze
// scenario (SIGSTOP 110-130 ms) found the clients cut off until the next
// announcement, 150 ms after go-live when the schedule began 0, 50, 150.
var announceSchedule = func() []time.Duration {
	s := []time.Duration{0, 0}
	for at := announceDenseEvery; at <= announceDenseFor; at += announceDenseEvery {
		s = append(s, at)
	}
	return append(s, time.Second, 2*time.Second, 4*time.Second)
}()

// announceDenseEvery and announceDenseFor: the dense start of
// announceSchedule (25 gratuitous ARPs of 42 bytes in half a second).
const (
	announceDenseEvery = 20 * time.Millisecond
	announceDenseFor   = 500 * time.Millisecond
)

// staleAnnounceMinInterval bounds how often a frame seen from the VM's own
// MAC (another host sending as this VM) starts the announcements again.
const staleAnnounceMinInterval = 100 * time.Millisecond

// announce sends the gratuitous ARPs of announceSchedule, the first ones
// before it returns, the later ones from a goroutine until ctx ends. It
// does nothing without a NIC or a --vm-ip.
func (d *daemon) announce(ctx context.Context, why string) {
	if d.nic == nil || !d.cfg.vmIP.IsValid() {
		return
	}
	garp := gratuitousARP(d.cfg.mac, d.cfg.vmIP.As4())
	send := func(later bool) {
		if !d.mayAnnounce(later) {
			return
		}
		if err := d.nic.WriteFrame(garp); err != nil {
			d.log.Warn("gratuitous ARP not sent", "err", err)
		}
	}
	i := 0
	for ; i < len(announceSchedule) && announceSchedule[i] == 0; i++ {
		send(false)
	}
	d.log.Debug("announcing the VM's address", "why", why, "ip", d.cfg.vmIP, "mac", d.cfg.mac)
	rest := announceSchedule[i:]
	if len(rest) == 0 {
		return
	}
	d.announcing.Add(1)
	go func() {
		defer d.announcing.Done()
		start := time.Now()
		for _, at := range rest {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(start.Add(at))):
			}
			send(true)
		}
	}()
}

// txFence keeps a primary that may have been deposed while it stalled from
// sending frames as the VM. A process stopped for longer than the peer
// timeout (SIGSTOP, a hypervisor pause, a swap storm) wakes up believing
// it is still primary, and releases the outputs its secondary had
// acknowledged before it stopped; meanwhile the secondary may have taken
// over, and one such frame moves the VM's MAC back to this host's port on
// the switch. So the fence watches its own clock: a gap of more than
// stallMax between two looks at it (the daemon looks every tick, and at
// every frame), or of more than watchStallMax between two looks of the
// transport's watchdog (twice per heartbeat interval, on its real-time
// thread: the peer takes this host for dead after the heartbeat timeout,
// so the fence must see a stall that short), means this host was not
// running, and from then on the VM's
// frames are dropped until this host has proof that it still serves the
// VM: the secondary acknowledged a log position written after the stall
// (a secondary that took over acknowledges nothing), a frame from the
// peer arrived more than peerGrace after the stall (a peer that took over
// sends nothing; what it sent before arrives at once), the node holds a
// newer epoch, or the node has no secondary that could have taken over.
// A dropped frame is a lost packet, which the network's protocols resend.
type txFence struct {
	base          time.Time
	stallMax      time.Duration
	watchStallMax time.Duration
	peerGrace     time.Duration

	lastLook  atomic.Int64 // ns since base: the latest look at the clock
	lastWatch atomic.Int64 // ns since base: a watchdog's latest look
	watchers  atomic.Int32 // transport watchdogs running
	// deposeGap: a gap of the watchdogs' looks this long (ns) may have
	// let the peer take this host for dead (its heartbeat timeout less a
	// heartbeat interval); longGaps counts them, deposeSeen is how many
	// the daemon acted on (mayBeDeposed).
	deposeGap  int64
	longGaps   atomic.Uint64
	deposeSeen atomic.Uint64
	stall      atomic.Int64 // ns since base when a stall was seen; 0: none
	peerFrame  atomic.Int64 // ns since base of the latest frame from the peer
	fenced     atomic.Uint64

	// Owned by the goroutine that calls tick.
	stallSeen        int64 // the stall the fields below belong to
	seqAtStall, epAt uint64
}

// newTxFence: progressTimeout is how long the peer's node waits for this
// one's messages (--peer-timeout-ticks x --tick), heartbeatTimeout how long
// its transport waits for this host's heartbeats.
func newTxFence(progressTimeout, heartbeatTimeout, heartbeatInterval time.Duration) *txFence {
	f := &txFence{base: time.Now(), stallMax: progressTimeout / 2, watchStallMax: heartbeatTimeout / 2,
		deposeGap: int64(max(heartbeatTimeout-heartbeatInterval, heartbeatTimeout/2)),
		peerGrace: min(progressTimeout, heartbeatTimeout)}
	f.lastLook.Store(1)
	return f
}

func (f *txFence) now() int64 { return max(1, int64(time.Since(f.base))) }

// look records that this host runs now, and a stall if it did not since
// the last look.
func (f *txFence) look() int64 {
	now := f.now()
	if prev := f.lastLook.Swap(now); now-prev > int64(f.stallMax) {
		f.stall.CompareAndSwap(0, now)
	}
	// The watchdog was not run either (its next look would see the gap,
	// but this frame comes first): one stall per gap.
	if w := f.lastWatch.Load(); f.watchers.Load() > 0 && now-w > int64(f.watchStallMax) && f.lastWatch.CompareAndSwap(w, now) {
		f.stall.CompareAndSwap(0, now)
		f.noteWatchGap(now - w)
	}
	return now
}

// noteWatchGap records a gap of gap ns in the watchdogs' looks.
func (f *txFence) noteWatchGap(gap int64) {
	if f.deposeGap > 0 && gap > f.deposeGap {
		f.longGaps.Add(1)
	}
}

// mayBeDeposed reports, once per such gap, that the watchdogs did not look
// for long enough that the peer may have taken this host for dead: a
// primary must then not act on what it reads (acknowledgements the
// secondary sent before it took over would release outputs in a stale
// epoch) but ask the arbiter again (PeerLost).
func (f *txFence) mayBeDeposed() bool {
	for {
		seen, n := f.deposeSeen.Load(), f.longGaps.Load()
		if seen >= n {
			return false
		}
		if f.deposeSeen.CompareAndSwap(seen, n) {
			return true
		}
	}
}

// watched is tcpfallback.Config.OnWatchdog: a transport's watchdog
// started, looked (the process runs now, as far as its real-time thread
// can tell; a gap since the previous look is a stall too) or stopped.
// While none runs, no peer watches this host's heartbeats either.
func (f *txFence) watched(ev tcpfallback.WatchdogEvent) {
	now := f.now()
	switch ev {
	case tcpfallback.WatchdogStarted:
		f.lastWatch.Store(now)
		f.watchers.Add(1)
	case tcpfallback.WatchdogStopped:
		f.watchers.Add(-1)
	case tcpfallback.WatchdogLook:
		if prev := f.lastWatch.Swap(now); now-prev > int64(f.watchStallMax) {
			f.stall.CompareAndSwap(0, now)
			f.noteWatchGap(now - prev)
		}
	}
}

// clear forgets a stall: this host has just been granted a newer epoch
// (go-live), which is all the proof the fence waits for, so the VM's
// first frames and announcements as primary are not held back until the
// next tick sees the epoch.
func (f *txFence) clear() { f.stall.Store(0) }

// peerHeard records a frame from the peer (before the agent sees it).
func (f *txFence) peerHeard() { f.peerFrame.Store(f.now()) }

// mayTransmit is the NIC gate's fence.
func (f *txFence) mayTransmit() bool {
	f.look()
	s := f.stall.Load()
	if s == 0 {
		return true
	}
	if f.peerFrame.Load() > s+int64(f.peerGrace) {
		f.stall.CompareAndSwap(s, 0)
		return true
	}
	f.fenced.Add(1)
	return false
}

// tick looks at the clock and at the node's status st, and lifts the
// fence once st proves this host still serves the VM. The daemon calls it
// every protocol tick, from one goroutine. It reports a stall it sees for
// the first time (how long this host did not run, as far as the fence
// can tell) and whether it lifted the fence.
func (f *txFence) tick(st lockstep.Status) (newStall bool, lifted bool) {
	f.look()
	s := f.stall.Load()
	if s == 0 {
		return false, false
	}
	if s != f.stallSeen {
		f.stallSeen, f.seqAtStall, f.epAt = s, st.LastSeq, st.Epoch
		newStall = true
		if st.Role == lockstep.RolePrimary && !st.Protected {
			// Alone, asking the arbiter (which holds every output) or
			// bringing a secondary up: no secondary in step could have
			// taken over. (A joiner that has restored its checkpoint
			// but whose confirmation is still on its way is in step
			// already: that window, a round trip, is not covered.)
			return true, f.stall.CompareAndSwap(s, 0)
		}
		return true, false
	}
	// A halted node releases nothing more, and a secondary's gate is
	// shut; either stays fenced until it is primary in a newer epoch.
	if st.Role == lockstep.RolePrimary && (st.Epoch > f.epAt || st.Acked > f.seqAtStall || !st.Protected) {
		return false, f.stall.CompareAndSwap(s, 0)
	}
	return false, false
}

// Fenced counts the frames the fence refused.
func (f *txFence) Fenced() uint64 { return f.fenced.Load() }

// peerTimeout is how long the peer may be silent before this host takes
// it for dead: the first of the transport's heartbeat timeout (a lane that
// reads nothing for that long is declared down, and the node is told at
// once) and the node's own --peer-timeout-ticks x --tick.
func (c *daemonConfig) peerTimeout(tr tcpfallback.Config) time.Duration {
	return min(c.transportTimeout(tr), c.progressTimeout())
}

// transportTimeout is the transport's heartbeat timeout while the pair is
// in step (while a secondary joins it is --join-heartbeat-timeout).
func (c *daemonConfig) transportTimeout(tcpfallback.Config) time.Duration {
	if c.heartbeatTimeout == 0 {
		return tcpfallback.DefaultHeartbeatTimeout
	}
	return c.heartbeatTimeout
}

// progressTimeout is the node's own: --peer-timeout-ticks x --tick without
// a protocol message from the peer (its transport's heartbeats flow, but
// its daemon is stuck).
func (c *daemonConfig) progressTimeout() time.Duration {
	return time.Duration(c.peerTimeoutTicks) * c.tick
}

// watchFence feeds the fence the node's status every tick until ctx ends.
func (d *daemon) watchFence(ctx context.Context) {
	t := time.NewTicker(d.cfg.tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st := d.ag.Status()
		d.setHeartbeatTimeouts(st)
		newStall, lifted := d.fence.tick(st)
		if newStall {
			d.log.Warn("this host did not run for longer than half the peer timeout: the VM's frames are held back until the secondary shows it still follows (it may have taken over)", "fenced_so_far", d.fence.Fenced())
		}
		if lifted {
			d.log.Info("the VM's frames flow again after the stall", "fenced", d.fence.Fenced())
		}
	}
}

// mayAnnounce says whether a gratuitous ARP may leave now: it claims the
// VM's address for this host, so it obeys what the VM's own frames obey
// (the gate is open: this host went live; the fence lets frames pass:
// this host has not stalled since it last had proof it still serves). A
// deposed primary that woke up and saw the new primary's frames from the
// VM's MAC would otherwise claim the address back. askNode also asks the
// node whether it is still primary (a node that halted, or learnt of a
// newer epoch, may still have announcements scheduled); it takes the
// agent's lock, so only a caller that holds none of the agent's locks
// (not the loop's OnGoLive) may ask.
func (d *daemon) mayAnnounce(askNode bool) bool {
	if !d.nic.IsOpen() || (d.fence != nil && !d.fence.mayTransmit()) {
		return false
	}
	return !askNode || d.ag == nil || d.ag.Status().Role == lockstep.RolePrimary
}

// staleFrameSeen is the NIC gate's WatchSource callback: a frame from the
// VM's own MAC arrived from the network. While this host serves the VM it
// comes from a host that should not send as the VM (an old primary that
// woke up), and may have moved the VM's address on the switch: announce
// it again.
func (d *daemon) staleFrameSeen() {
	if !d.nic.IsOpen() {
		return // the primary's own frames, as a secondary sees them
	}
	now := time.Now().UnixNano()
	last := d.lastStaleAnnounce.Load()
	if now-last < int64(staleAnnounceMinInterval) || !d.lastStaleAnnounce.CompareAndSwap(last, now) {
		return
	}
	if !d.mayAnnounce(true) {
		return // halted, or fenced after a stall: the other host may rightly serve
	}
	if ctx := d.life.Load(); ctx != nil {
		d.log.Warn("a frame from the VM's MAC came from another host: announcing the VM's address again")
		go d.announce(*ctx, "stale frame")
	}
}

// deposedMaybe: this host was not run for long enough that its secondary
// may have taken it for dead and taken over. A protected primary then
// treats its secondary as lost (lockstep.Node.PeerLost): it releases
// nothing more in this epoch and asks the arbiter for the next one, which
// it gets only if the secondary did not take over (it then goes on alone
// and the secondary joins again); otherwise it halts.
func (d *daemon) deposedMaybe() {
	st := d.ag.Status()
	if st.Role != lockstep.RolePrimary || !st.Protected || st.Syncing {
		return // no secondary in step: none could have taken over
	}
	d.log.Warn("this host was not run for longer than its secondary waits for heartbeats: asking the arbiter whether it is still primary before it releases anything more", "epoch", st.Epoch)
	d.deposing.Store(st.Epoch)
	d.ag.PeerLost()
}

// deposingDrop reports whether a frame from the peer is to be dropped: the
// node acts on PeerLost at its next tick, and until it has left the
// protected epoch deposedMaybe saw, an acknowledgement read now (sent
// before the secondary took over) would still release outputs in it.
func (d *daemon) deposingDrop() bool {
	e := d.deposing.Load()
	if e == 0 {
		return false
	}
	if st := d.ag.Status(); st.Role == lockstep.RolePrimary && st.Epoch == e && st.Protected {
		return true
	}
	d.deposing.CompareAndSwap(e, 0)
	return false
}

// setHeartbeatTimeouts gives the transports --heartbeat-timeout while the
// pair is in step, and --join-heartbeat-timeout while a secondary joins: a
// joiner restoring a checkpoint (and its primary taking and shipping one)
// is busier than anything in step, and a join that breaks costs a new one,
// not a failover, since a secondary not in step cannot take over anyway.
func (d *daemon) setHeartbeatTimeouts(st lockstep.Status) {
	inStep := st.Role == lockstep.RolePrimary && st.Protected && !st.Syncing || st.Role == lockstep.RoleSecondary && st.Synced
	timeout := d.cfg.joinHeartbeatTimeout
	if inStep {
		timeout = d.cfg.heartbeatTimeout
	}
	for _, tr := range d.transports() {
		if tr.TCP().HeartbeatTimeout() != timeout {
			tr.TCP().SetHeartbeatTimeout(timeout)
		}
	}
}
