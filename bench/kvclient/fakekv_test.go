package kvclient

// TEST FAKE. fakeKV imitates the kvstore guest's UDP protocol on 127.0.0.1
// so that the client's own logic (matching, retries, gaps, history) can be
// unit-tested without a VM. It is not the server under test anywhere: the
// real kvstore is vmm/guests/kvstore, reached through ftvm in the e2e test.

import (
	"bytes"
	"net"
	"strconv"
	"sync"
	"testing"
)

type fakeEntry struct {
	version uint64
	value   string
}

type fakeKV struct {
	conn *net.UDPConn

	mu      sync.Mutex
	state   map[string]fakeEntry // mu must be held
	applied uint64               // requests applied; mu must be held
	// dropFirstReplies: for this many requests, the reply to the first
	// attempt is dropped after the request was applied, as when a reply is
	// lost on the wire; like the real server, a retry is applied again.
	dropFirstReplies int
	seen             map[string]bool // request datagrams answered or dropped
	// down: requests are ignored (the server is away).
	down bool
	// snapshot, when set by crash, is the state restored by recover: a
	// failover that lost the writes acknowledged in between.
	snapshot map[string]fakeEntry

	received []string // every request datagram, in order; mu must be held

	done chan struct{}
}

func startFakeKV(t testing.TB) *fakeKV {
	return startFakeKVAt(t, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
}

func startFakeKVAt(t testing.TB, at *net.UDPAddr) *fakeKV {
	t.Helper()
	conn, err := net.ListenUDP("udp", at)
	if err != nil {
		t.Fatalf("fake kvstore: listen: %v", err)
	}
	f := &fakeKV{conn: conn, state: map[string]fakeEntry{}, seen: map[string]bool{}, done: make(chan struct{})}
	go f.serve()
	t.Cleanup(func() { conn.Close(); <-f.done })
	return f
}

func (f *fakeKV) addr() string { return f.conn.LocalAddr().String() }

func (f *fakeKV) set(fn func(f *fakeKV)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// takeSnapshot remembers the state that restoreSnapshot will bring back.
func (f *fakeKV) takeSnapshot() {
	f.set(func(f *fakeKV) {
		f.snapshot = map[string]fakeEntry{}
		for k, e := range f.state {
			f.snapshot[k] = e
		}
	})
}

func (f *fakeKV) restoreSnapshot() {
	f.set(func(f *fakeKV) { f.state, f.snapshot = f.snapshot, nil })
}

func (f *fakeKV) serve() {
	defer close(f.done)
	buf := make([]byte, 1024)
	for {
		n, from, err := f.conn.ReadFromUDP(buf)
		if err != nil {
			return
		}
		reply, send := f.handle(buf[:n])
		if send {
			f.conn.WriteToUDP(reply, from)
		}
	}
}

func (f *fakeKV) handle(req []byte) ([]byte, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return nil, false
	}
	f.received = append(f.received, string(req))
	fields := bytes.SplitN(bytes.TrimRight(req, "\r\n"), []byte(" "), 4)
	if _, err := strconv.ParseUint(string(fields[0]), 10, 64); err != nil {
		return []byte("? ERR badid\n"), true
	}
	id := string(fields[0])
	reply := func(s string) []byte { return []byte(id + " " + s + "\n") }
	if len(fields) < 3 {
		return reply("ERR usage"), true
	}
	key := string(fields[2])
	e := f.state[key]
	var out []byte
	switch op := string(fields[1]); {
	case op == "PUT" && len(fields) == 4:
		e = fakeEntry{version: e.version + 1, value: string(fields[3])}
		f.state[key] = e
		f.applied++
		out = reply("OK " + strconv.FormatUint(e.version, 10))
	case op == "GET" && len(fields) == 3:
		if e.version == 0 {
			return reply("NONE"), true
		}
		return reply("VAL " + strconv.FormatUint(e.version, 10) + " " + e.value), true
	case op == "INC" && len(fields) == 3:
		n := uint64(0)
		if e.version > 0 {
			var err error
			if n, err = strconv.ParseUint(e.value, 10, 64); err != nil {
				return reply("ERR notnum"), true
			}
		}
		n++
		f.state[key] = fakeEntry{version: e.version + 1, value: strconv.FormatUint(n, 10)}
		f.applied++
		out = reply("VAL " + strconv.FormatUint(n, 10))
	default:
		return reply("ERR badop"), true
	}
	if f.dropFirstReplies > 0 && !f.seen[string(req)] {
		f.seen[string(req)] = true
		f.dropFirstReplies--
		return nil, false
	}
	return out, true
}
