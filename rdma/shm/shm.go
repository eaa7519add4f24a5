//go:build linux

package shm

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftvm/ftvm/rdma"
	"golang.org/x/sys/unix"
)

// The file's layout (doc.go): a header page, the signal queue, the region.
const (
	headerBytes     = 4096
	queueEntries    = 1024
	queueBytes      = queueEntries * 8
	regionOff       = headerBytes + queueBytes
	offMagic        = 0
	offSize         = 8
	offNonce        = 16
	nonceBytes      = 16
	offRevoked      = 64
	offOverflow     = 68
	offAttached     = 72
	offSeq          = 128
	offSleeping     = 192
	offSigHead      = 384
	fileMagic       = "FTVMSHM1"
	paramsMagic     = "FTVMSHMP"
	paramsVersion   = 1
	paramsFixed     = 8 + 2 + 2 + 8 + nonceBytes
	maxPathBytes    = 1024
	filePrefix      = "ftvm-shm-"
	fileSuffix      = ".region"
	MaxRegionBytes  = rdma.RegionHeaderBytes + rdma.MaxRingBytes
	defaultDirShm   = "/dev/shm"
	waitSliceMaxDur = 100 * time.Millisecond
)

// headPublishEvery: the owner stores its queue head for the writer once
// per this many signals polled, not at every Poll: Go's atomic store is
// an exchange (a full barrier), and the writer looks at the head only
// when the queue seems full.
const headPublishEvery = 256

// The queue must hold what the ring protocol may leave unpolled, with the
// head published that late.
var _ = [queueEntries - headPublishEvery - rdma.MaxUnpolledSignals]struct{}{}

// ErrRevoked: the peer retired the region this side wrote into.
var ErrRevoked = errors.New("shm: the peer revoked this host's access to its region")

// Provider makes regions as files in Dir, for a peer process on the same
// host to map.
type Provider struct {
	// Dir holds the region files; empty: /dev/shm if it exists, else the
	// temporary directory. Both processes must see the same files there
	// (two network namespaces do; two mount namespaces may not).
	Dir string
}

var _ rdma.Provider = Provider{}

// Name is "shm".
func (Provider) Name() string { return "shm" }

func (p Provider) dir() string {
	if p.Dir != "" {
		return p.Dir
	}
	if st, err := os.Stat(defaultDirShm); err == nil && st.IsDir() {
		return defaultDirShm
	}
	return os.TempDir()
}

// Open makes a region of size bytes in a fresh file of its own.
func (p Provider) Open(size int) (rdma.Endpoint, error) {
	if size <= 0 || size%4096 != 0 || size > MaxRegionBytes {
		return nil, fmt.Errorf("shm: a region of %d bytes: give a multiple of 4096 up to %d", size, MaxRegionBytes)
	}
	var nonce [nonceBytes]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(p.dir())
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, filePrefix+hex.EncodeToString(nonce[:8])+fileSuffix)
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("shm: creating the region file %s: %w (is %s writable? set the shm directory to one both daemons see)", path, err, dir)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, int64(regionOff+size)); err != nil {
		unix.Unlink(path)
		return nil, fmt.Errorf("shm: sizing %s: %w", path, err)
	}
	m, err := mapFile(fd, regionOff+size)
	if err != nil {
		unix.Unlink(path)
		return nil, fmt.Errorf("shm: mapping %s: %w", path, err)
	}
	copy(m[offMagic:], fileMagic)
	binary.LittleEndian.PutUint64(m[offSize:], uint64(size))
	copy(m[offNonce:], nonce[:])
	e := &endpoint{path: path, size: size, nonce: nonce, m: m}
	return e, nil
}

// endpoint is one side's region, in the file it created.
type endpoint struct {
	path  string
	size  int
	nonce [nonceBytes]byte

	mu       sync.Mutex
	m        []byte // the whole file mapping; nil once closed
	revoked  bool
	unlinked bool
	link     *link
}

func (e *endpoint) Local() []byte { return e.m[regionOff : regionOff+e.size : regionOff+e.size] }

// Params: magic, version, path length, region size, nonce, path (doc.go).
func (e *endpoint) Params() []byte {
	b := make([]byte, paramsFixed+len(e.path))
	copy(b[0:8], paramsMagic)
	binary.LittleEndian.PutUint16(b[8:], paramsVersion)
	binary.LittleEndian.PutUint16(b[10:], uint16(len(e.path)))
	binary.LittleEndian.PutUint64(b[12:], uint64(e.size))
	copy(b[20:], e.nonce[:])
	copy(b[paramsFixed:], e.path)
	return b
}

type peerParams struct {
	path  string
	size  int
	nonce [nonceBytes]byte
}

func parseParams(b []byte) (peerParams, error) {
	var p peerParams
	if len(b) < paramsFixed {
		return p, fmt.Errorf("shm: the peer's parameters are %d bytes, shorter than the %d-byte fixed part", len(b), paramsFixed)
	}
	if string(b[0:8]) != paramsMagic {
		return p, fmt.Errorf("shm: the peer's parameters start %q, not %q: it offers another kind of memory", b[0:8], paramsMagic)
	}
	if v := binary.LittleEndian.Uint16(b[8:]); v != paramsVersion {
		return p, fmt.Errorf("shm: the peer's parameters are version %d, this host's %d", v, paramsVersion)
	}
	n := int(binary.LittleEndian.Uint16(b[10:]))
	if n == 0 || n > maxPathBytes || len(b) != paramsFixed+n {
		return p, fmt.Errorf("shm: the peer's parameters name a path of %d bytes in %d bytes of parameters", n, len(b))
	}
	size := binary.LittleEndian.Uint64(b[12:])
	if size == 0 || size%4096 != 0 || size > MaxRegionBytes {
		return p, fmt.Errorf("shm: the peer's region of %d bytes is not a multiple of 4096 up to %d", size, MaxRegionBytes)
	}
	p.size = int(size)
	copy(p.nonce[:], b[20:])
	p.path = string(b[paramsFixed:])
	base := filepath.Base(p.path)
	if !filepath.IsAbs(p.path) || filepath.Clean(p.path) != p.path || strings.ContainsRune(p.path, 0) ||
		!strings.HasPrefix(base, filePrefix) || !strings.HasSuffix(base, fileSuffix) {
		return p, fmt.Errorf("shm: the peer's region path %q is not an absolute, clean path to a %s*%s file", p.path, filePrefix, fileSuffix)
	}
	return p, nil
}

// Connect maps the peer's region file after checking it is the one the
// peer described (size and nonce), and unlinks it: from then on only the
// two mappings hold it.
func (e *endpoint) Connect(peer []byte) (rdma.Link, error) {
	p, err := parseParams(peer)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.m == nil {
		return nil, errors.New("shm: Connect on a closed endpoint")
	}
	if e.link != nil {
		return nil, errors.New("shm: the endpoint is connected already; open a new one for a new connection")
	}
	fd, err := unix.Open(p.path, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("shm: opening the peer's region %s: %w (shm works only between two processes on one host that see the same %s)", p.path, err, filepath.Dir(p.path))
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != int64(regionOff+p.size) {
		return nil, fmt.Errorf("shm: the peer's region %s is not a regular file of %d bytes", p.path, regionOff+p.size)
	}
	m, err := mapFile(fd, regionOff+p.size)
	if err != nil {
		return nil, fmt.Errorf("shm: mapping the peer's region %s: %w", p.path, err)
	}
	if string(m[offMagic:offMagic+8]) != fileMagic || binary.LittleEndian.Uint64(m[offSize:]) != uint64(p.size) ||
		string(m[offNonce:offNonce+nonceBytes]) != string(p.nonce[:]) {
		unmap(m)
		return nil, fmt.Errorf("shm: %s is not the region the peer described (magic, size or nonce differ): another process's file", p.path)
	}
	if !word32(m, offAttached).CompareAndSwap(0, 1) {
		unmap(m)
		return nil, fmt.Errorf("shm: the peer's region %s has a writer already", p.path)
	}
	unix.Unlink(p.path)
	l := &link{ep: e, local: e.m, peer: m, peerSize: p.size}
	e.link = l
	return l, nil
}

// Close unmaps the region and removes its file.
func (e *endpoint) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.closeLocked()
}

func (e *endpoint) closeLocked() error {
	if e.m == nil {
		return nil
	}
	if e.link != nil {
		e.link.closePeer()
	}
	if !e.unlinked {
		unix.Unlink(e.path)
		e.unlinked = true
	}
	err := unmap(e.m)
	e.m = nil
	return err
}

// link is a connected endpoint: local is this side's file mapping, peer the
// peer's.
type link struct {
	ep       *endpoint
	local    []byte // the whole of this side's file mapping
	peer     []byte // the whole of the peer's; nil once closed
	peerSize int

	// Writer side (Write and WriteImm are called one at a time).
	sigTail  uint64 // our copy of the peer's queue tail
	headSeen uint64 // the peer's queue head as last loaded: reloaded only when the queue looks full, since the peer writes it at every Poll

	// Reader side (Poll and Wait one at a time).
	sigHead      uint64
	sigPublished uint64 // the head as last stored for the writer

	err atomic.Pointer[error]
}

var _ rdma.Link = (*link)(nil)

func (l *link) Local() []byte {
	n := l.ep.size
	return l.local[regionOff : regionOff+n : regionOff+n]
}

// Staging is the peer's region itself: a store into it is the one-sided
// write, placed at once, so Write only checks. Nothing of it is read by
// the peer before the signal that follows.
func (l *link) Staging() []byte {
	return l.peer[regionOff : regionOff+l.peerSize : regionOff+l.peerSize]
}

func (l *link) PeerSize() int { return l.peerSize }

func (l *link) fail(err error) error {
	l.err.CompareAndSwap(nil, &err)
	return err
}

func (l *link) Err() error {
	if p := l.err.Load(); p != nil {
		return *p
	}
	return nil
}

func (l *link) Write(off, n int) error {
	if off < 0 || n < 0 || off > l.peerSize-n {
		return fmt.Errorf("shm: write of %d bytes at offset %d outside the peer's %d-byte region", n, off, l.peerSize)
	}
	if err := l.Err(); err != nil {
		return err
	}
	if l.peer == nil {
		return errors.New("shm: write on a closed link")
	}
	if word32(l.peer, offRevoked).Load() != 0 {
		return l.fail(ErrRevoked)
	}
	return nil
}

// WriteImm checks the write, then queues imm with a release store of the
// queue's tail (every byte stored before is visible to a reader that sees
// the tail), then wakes the peer if it sleeps.
func (l *link) WriteImm(off, n int, imm uint32) error {
	if err := l.Write(off, n); err != nil {
		return err
	}
	if l.sigTail-l.headSeen >= queueEntries {
		l.headSeen = word64(l.peer, offSigHead).Load()
	}
	if l.sigTail-l.headSeen >= queueEntries {
		word32(l.peer, offOverflow).Store(1)
		return l.fail(fmt.Errorf("shm: the peer's signal queue is full (%d signals unpolled): it stopped polling", queueEntries))
	}
	// One store publishes the signal: the slot's lap number (never 0)
	// and the imm, in one word; every byte stored before it is visible
	// to a reader that sees it.
	word64(l.peer, slotOff(l.sigTail)).Store(slotValue(l.sigTail, imm))
	l.sigTail++
	if sl := word32(l.peer, offSleeping); sl.Load() != 0 && sl.CompareAndSwap(1, 0) {
		seq := word32(l.peer, offSeq)
		seq.Add(1)
		futexWake(seq)
	}
	return nil
}

// slotOff is where the queue slot of the n-th signal is.
func slotOff(n uint64) int { return headerBytes + int(n%queueEntries)*8 }

// slotValue is what the slot of the n-th signal holds once it is
// queued: the lap n/queueEntries + 1 in the high half, imm in the low.
func slotValue(n uint64, imm uint32) uint64 {
	return uint64(uint32(n/queueEntries)+1)<<32 | uint64(imm)
}

// Poll copies the queued signals into imms' spare capacity: it reads
// slots while each holds the lap this side expects there, so a slot the
// peer filled with anything else is simply not a signal yet.
func (l *link) Poll(imms []uint32) (int, error) {
	if err := l.Err(); err != nil {
		return 0, err
	}
	room := imms[len(imms):cap(imms)]
	n := 0
	for n < len(room) {
		v := word64(l.local, slotOff(l.sigHead)).Load()
		if uint32(v>>32) != uint32(l.sigHead/queueEntries)+1 {
			break
		}
		room[n] = uint32(v)
		n++
		l.sigHead++
	}
	if n == 0 {
		if word32(l.local, offOverflow).Load() != 0 {
			return 0, l.fail(errors.New("shm: this side's signal queue overflowed: signals were lost"))
		}
		return 0, nil
	}
	// The writer reads the head only when the queue looks full, so
	// publishing it every headPublishEvery signals is enough: the queue
	// then holds queueEntries - headPublishEvery, still more than the ring
	// protocol leaves unpolled.
	if l.sigHead-l.sigPublished >= headPublishEvery {
		l.sigPublished = l.sigHead
		word64(l.local, offSigHead).Store(l.sigHead)
	}
	return n, nil
}

func (l *link) signalQueued() bool {
	v := word64(l.local, slotOff(l.sigHead)).Load()
	return uint32(v>>32) == uint32(l.sigHead/queueEntries)+1
}

// Wait sleeps on the shared futex word until the peer queues a signal.
func (l *link) Wait(timeout time.Duration) error {
	if err := l.Err(); err != nil {
		return err
	}
	if timeout <= 0 {
		return nil
	}
	sleeping, seq := word32(l.local, offSleeping), word32(l.local, offSeq)
	sleeping.Store(1)
	seen := seq.Load()
	// Sequentially consistent stores and loads on both sides: either the
	// writer sees sleeping == 1 after its tail store, or we see its tail.
	if l.signalQueued() || sleeping.Load() == 0 {
		sleeping.Store(0)
		return nil
	}
	futexWait(seq, seen, min(timeout, waitSliceMaxDur))
	sleeping.Store(0)
	return nil
}

// Revoke retires this side's region: the revoked word tells the peer's
// later writes to fail, and the file's pages are swapped out from under
// this side's mapping (detach) so that a store the peer makes anyway lands
// in a file no one else maps.
func (l *link) Revoke() error {
	e := l.ep
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.revoked || e.m == nil {
		return nil
	}
	word32(e.m, offRevoked).Store(1)
	if err := detach(e.m); err != nil {
		return fmt.Errorf("shm: retiring the region: %w", err)
	}
	e.revoked = true
	if !e.unlinked {
		unix.Unlink(e.path)
		e.unlinked = true
	}
	return nil
}

func (l *link) closePeer() {
	if l.peer != nil {
		unmap(l.peer)
		l.peer = nil
	}
}

// Close unmaps both regions and removes this side's file.
func (l *link) Close() error {
	l.fail(errors.New("shm: link closed"))
	return l.ep.Close()
}
