package kvclient

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftvm/ftvm/bench/linearize"
)

// Retry bounds a Client uses when the caller gives none.
const (
	DefaultAttemptTimeout = 200 * time.Millisecond
	DefaultAttemptsMax    = 10
	// attemptsMaxLimit bounds AttemptsMax: past it a request is better
	// counted as unanswered than kept alive.
	attemptsMaxLimit = 1000
)

// Retry says how hard Do tries to get an answer.
type Retry struct {
	// AttemptTimeout is how long Do waits for a reply to one send before
	// sending the request again (same id).
	AttemptTimeout time.Duration
	// AttemptsMax bounds the sends of one request, the first included.
	AttemptsMax int
}

func (r Retry) withDefaults() Retry {
	if r.AttemptTimeout == 0 {
		r.AttemptTimeout = DefaultAttemptTimeout
	}
	if r.AttemptsMax == 0 {
		r.AttemptsMax = DefaultAttemptsMax
	}
	return r
}

func (r Retry) validate() error {
	if r.AttemptTimeout < 0 {
		return fmt.Errorf("kvclient: attempt timeout %v is negative; give a positive duration or 0 for %v", r.AttemptTimeout, DefaultAttemptTimeout)
	}
	if r.AttemptsMax < 0 || r.AttemptsMax > attemptsMaxLimit {
		return fmt.Errorf("kvclient: AttemptsMax %d is outside 1..%d (0 means %d)", r.AttemptsMax, attemptsMaxLimit, DefaultAttemptsMax)
	}
	return nil
}

// arrival is one reply datagram and when it was read.
type arrival struct {
	reply Reply
	raw   string
	atNs  int64
}

// Client sends kvstore requests over one UDP socket. It is safe for
// concurrent use; every Do waits for its own reply. Close it when done.
type Client struct {
	conn   *net.UDPConn
	origin time.Time // times in recorded operations are nanoseconds since origin
	nextID atomic.Uint64

	mu      sync.Mutex
	pending map[uint64]chan arrival // mu must be held

	// Written by the reader goroutine only; read by anyone.
	lastReplyNs   atomic.Int64 // -1 before the first reply
	maxGapNs      atomic.Int64
	maxGapStartNs atomic.Int64
	stray         atomic.Uint64 // replies nobody waited for (late or duplicated)
	malformed     atomic.Uint64 // datagrams that were not replies
	mismatched    atomic.Uint64 // replies that cannot answer their request's kind

	readerDone chan struct{}
}

// Dial opens a client for the kvstore at addr ("host:port"). Operation
// times are measured from this call.
func Dial(addr string) (*Client, error) {
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("kvclient: server address %q: %w (want host:port, e.g. 10.0.0.2:7000)", addr, err)
	}
	conn, err := net.DialUDP("udp", nil, raddr)
	if err != nil {
		return nil, fmt.Errorf("kvclient: open a UDP socket to %s: %w", addr, err)
	}
	c := &Client{
		conn:       conn,
		origin:     time.Now(),
		pending:    map[uint64]chan arrival{},
		readerDone: make(chan struct{}),
	}
	// Ids start at a random point so that late replies from an earlier run
	// against the same server match nothing here; 2^62 leaves room to count.
	c.nextID.Store(rand.Uint64() >> 2)
	c.lastReplyNs.Store(-1)
	go c.read()
	return c, nil
}

// Close closes the socket; Do calls in progress end with unknown outcomes.
func (c *Client) Close() error {
	err := c.conn.Close()
	<-c.readerDone
	return err
}

// Now is the time on the client's clock, as recorded in operations.
func (c *Client) Now() int64 { return int64(time.Since(c.origin)) }

// Origin is the wall-clock time the client's clock counts from.
func (c *Client) Origin() time.Time { return c.origin }

func (c *Client) read() {
	defer close(c.readerDone)
	buf := make([]byte, replyBytesMax+1)
	for {
		n, err := c.conn.Read(buf)
		at := c.Now()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// A connected UDP socket reports an ICMP "port unreachable"
			// for an earlier send as a read error (ECONNREFUSED). That is
			// the server being away, which retries handle; keep reading.
			continue
		}
		if n > replyBytesMax {
			c.malformed.Add(1)
			continue
		}
		r, err := ParseReply(buf[:n])
		if err != nil || !r.HasID {
			c.malformed.Add(1)
			continue
		}
		c.mu.Lock()
		ch := c.pending[r.ID]
		c.mu.Unlock()
		if ch == nil {
			c.stray.Add(1)
			continue
		}
		select {
		case ch <- arrival{reply: r, raw: string(buf[:n]), atNs: at}:
			c.noteReply(at)
		default: // a second reply to a retried request; the first one counts
			c.stray.Add(1)
		}
	}
}

// noteReply tracks the largest silence between two answered requests.
func (c *Client) noteReply(at int64) {
	last := c.lastReplyNs.Swap(at)
	if last >= 0 && at-last > c.maxGapNs.Load() {
		c.maxGapNs.Store(at - last)
		c.maxGapStartNs.Store(last)
	}
}

// Do sends req and waits for its reply, resending it with the same id after
// each attempt timeout, up to retry.AttemptsMax sends. The returned
// operation is the history record: its Outcome is Unknown when no reply came
// (or ctx ended first). The error is non-nil only when req is invalid or the
// client is closed; a server that does not answer is not an error.
func (c *Client) Do(ctx context.Context, req Request, retry Retry) (linearize.Op, error) {
	retry = retry.withDefaults()
	if err := retry.validate(); err != nil {
		return linearize.Op{}, err
	}
	if err := req.Validate(); err != nil {
		return linearize.Op{}, err
	}
	op := linearize.Op{ID: c.nextID.Add(1), Kind: req.Kind, Key: req.Key, Value: req.Value}
	ch := make(chan arrival, 1)
	c.mu.Lock()
	c.pending[op.ID] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, op.ID)
		c.mu.Unlock()
	}()
	datagram := AppendRequest(make([]byte, 0, 32+len(req.Key)+len(req.Value)), op.ID, req)
	timer := time.NewTimer(retry.AttemptTimeout)
	defer timer.Stop()
	op.Invoke = c.Now()
	for op.Attempts < retry.AttemptsMax {
		op.Attempts++
		if _, err := c.conn.Write(datagram); errors.Is(err, net.ErrClosed) {
			return op, fmt.Errorf("kvclient: request #%d: client is closed", op.ID)
		} // other send errors (no route, refused) are a lost attempt
		timer.Reset(retry.AttemptTimeout)
		select {
		case a := <-ch:
			op.Reply = a.raw
			if !record(&op, a.reply) {
				c.mismatched.Add(1)
				return op, nil // Unknown: the reply does not say what happened
			}
			op.Complete = a.atNs
			return op, nil
		case <-timer.C:
		case <-ctx.Done():
			return op, nil
		}
	}
	return op, nil
}

// Counters are what a Client saw besides answers to its requests.
type Counters struct {
	Stray      uint64 // replies to nobody: late after a retry, or duplicated
	Malformed  uint64 // datagrams that were not replies
	Mismatched uint64 // replies that cannot answer their request's kind
}

// Counters returns the client's counters so far.
func (c *Client) Counters() Counters {
	return Counters{Stray: c.stray.Load(), Malformed: c.malformed.Load(), Mismatched: c.mismatched.Load()}
}

// replyGaps returns the time of the last reply (-1 before any), the largest
// gap between consecutive replies, and when that gap began.
func (c *Client) replyGaps() (lastNs, maxGapNs, maxGapStartNs int64) {
	return c.lastReplyNs.Load(), c.maxGapNs.Load(), c.maxGapStartNs.Load()
}
