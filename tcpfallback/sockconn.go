package tcpfallback

import (
	"io"
	"net"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// sockConn is a lane's TCP connection as the rest of the connection sees
// it (TLS reads and writes through it; a plain lane reads through it). It
// counts the system calls made on the socket (Stats' Reads and Writes)
// and lets the lane's reader ask for what can be had without waiting
// (readNow): what TLS has buffered, else what the socket holds now,
// else errNothingNow. That is how the reader knows a batch has ended
// (Config.OnBatchEnd) without a timer and without waiting for more.
type sockConn struct {
	*net.TCPConn
	rc syscall.RawConn
	// stats are the lane's counters, set once set-up has named the lane
	// (nil before: the handshake's reads and writes are not counted).
	stats atomic.Pointer[laneStats]

	// Reader state: touched only by whoever reads (the set-up, then the
	// lane's reader, never both at once).
	//
	// nonblock: Read must not wait; it returns errNothingNow instead.
	nonblock bool
	// drained: the last read from the socket returned less than it
	// asked for, so the socket held nothing more at that moment. A
	// nonblocking Read then answers errNothingNow without a system call:
	// what arrived since is read by the next blocking Read, right after
	// the batch's end, so nothing waits for it.
	drained bool
	// For the prebuilt nonblocking read (no allocation per call).
	nbP   []byte
	nbN   int
	nbErr error
	nbFn  func(fd uintptr) bool
}

func newSockConn(tcp *net.TCPConn) (*sockConn, error) {
	rc, err := tcp.SyscallConn()
	if err != nil {
		return nil, err
	}
	s := &sockConn{TCPConn: tcp, rc: rc}
	s.nbFn = func(fd uintptr) bool {
		for {
			n, err := unix.Read(int(fd), s.nbP)
			switch {
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN:
				s.nbErr = errNothingNow
			case err != nil:
				s.nbErr = err
			case n == 0:
				s.nbErr = io.EOF
			default:
				s.nbN = n
			}
			return true // never wait for readability
		}
	}
	return s, nil
}

// errNothingNow is a nonblocking Read's answer when nothing can be read
// without waiting. It is a temporary net.Error so that crypto/tls, which
// keeps any other read error for good, returns it and keeps what it had
// read of a record for the next Read.
var errNothingNow error = nothingNowError{}

type nothingNowError struct{}

func (nothingNowError) Error() string   { return "tcpfallback: nothing to read without waiting" }
func (nothingNowError) Timeout() bool   { return true }
func (nothingNowError) Temporary() bool { return true }

func (s *sockConn) countRead() {
	if st := s.stats.Load(); st != nil {
		st.reads.Add(1)
	}
}

func (s *sockConn) countWrite() {
	if st := s.stats.Load(); st != nil {
		st.writes.Add(1)
	}
}

// Read reads from the socket: as net.TCPConn does, or with nonblock set
// at most what is there now (errNothingNow: nothing).
func (s *sockConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if !s.nonblock {
		n, err := s.TCPConn.Read(p)
		s.countRead()
		s.drained = n < len(p)
		return n, err
	}
	if s.drained {
		return 0, errNothingNow
	}
	s.nbP, s.nbN, s.nbErr = p, 0, nil
	err := s.rc.Read(s.nbFn)
	s.nbP = nil
	s.countRead()
	if err != nil {
		return 0, err
	}
	s.drained = s.nbN < len(p)
	return s.nbN, s.nbErr
}

// Write writes p, counted as one system call (TLS writes a record, or
// the staging buffer's records, at a time).
func (s *sockConn) Write(p []byte) (int, error) {
	s.countWrite()
	return s.TCPConn.Write(p)
}
