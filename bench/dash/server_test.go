package dash

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// scripted is a source whose answers a test sets.
type scripted struct {
	s   *Sample
	err error
}

func (sc *scripted) source(name string) Source {
	return Source{Name: name, Fetch: func(context.Context) (*Sample, error) {
		if sc.err != nil {
			return nil, sc.err
		}
		c := *sc.s
		c.Time = time.Now()
		return &c, nil
	}}
}

// trimmed is h's snapshot without its trailing zeros, as a daemon sends it.
func trimmed(h *hdrhistogram.Histogram) *hdrhistogram.Snapshot {
	s := h.Export()
	for len(s.Counts) > 0 && s.Counts[len(s.Counts)-1] == 0 {
		s.Counts = s.Counts[:len(s.Counts)-1]
	}
	return s
}

func kinds(evs []Event) string {
	var k []string
	for _, e := range evs {
		k = append(k, e.Host+":"+e.Kind)
	}
	return strings.Join(k, " ")
}

// TestServerFramesAndEvents drives the server through a failover with
// scripted hosts: the percentiles are of each interval only, and the
// events say what changed.
func TestServerFramesAndEvents(t *testing.T) {
	hA := hdrhistogram.New(1_000, 60_000_000_000, 3)
	for range 100 {
		hA.RecordValue(1_000_000) // 1 ms
	}
	a := &scripted{s: &Sample{PID: 1, Role: "primary", Epoch: 1, Protected: true, LagSeconds: 0.05, Hold: trimmed(hA),
		Lanes: []Lane{{Name: "control", SentBytes: 0}}}}
	b := &scripted{s: &Sample{PID: 2, Role: "secondary", Epoch: 1, Synced: true}}
	srv, err := NewServer(Config{Sources: []Source{a.source("a"), b.source("b")}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	srv.Poll(ctx)
	f := srv.last
	if got := kinds(f.Events); got != "a:up b:up" {
		t.Errorf("first poll's events %q, want both hosts up", got)
	}
	if f.Pair.Primary != "a" || f.Pair.LagColor != "yellow" {
		t.Errorf("pair %+v: want primary a, lag 50 ms yellow", f.Pair)
	}
	for range 100 {
		hA.RecordValue(10_000_000) // 10 ms
	}
	a.s.Hold = trimmed(hA) // longer than the first: 10 ms lies further out
	a.s.Lanes = []Lane{{Name: "control", SentBytes: 125_000}}
	time.Sleep(20 * time.Millisecond)
	srv.Poll(ctx)
	f = srv.last
	if f.Pair.N != 100 || f.Pair.P50 < 0.0099 || f.Pair.P50 > 0.0101 {
		t.Errorf("second interval: n %d p50 %v s, want the 100 outputs of 10 ms alone", f.Pair.N, f.Pair.P50)
	}
	if f.Pair.BandwidthBps <= 0 {
		t.Errorf("bandwidth %v with 125000 bytes sent in the interval", f.Pair.BandwidthBps)
	}
	a.err = errors.New("connection refused")
	b.s = &Sample{PID: 2, Role: "primary", Epoch: 2, Failovers: 1, Divergences: 1}
	srv.Poll(ctx)
	f = srv.last
	if got := kinds(f.Events); got != "a:down b:failover b:divergence" {
		t.Errorf("events after the kill %q, want a down, b's failover and divergence", got)
	}
	b.s.Joins, b.s.Syncing, b.s.JoinTotalBytes, b.s.JoinSentBytes = 1, true, 4<<20, 1<<20
	srv.Poll(ctx)
	if got := kinds(srv.last.Events); got != "b:join b:join" || !strings.Contains(srv.last.Events[1].Text, "25% of 4.0 MiB") {
		t.Errorf("a join a quarter sent: events %v, want it begun and 25%% sent", srv.last.Events)
	}
	b.s.Syncing, b.s.Protected = false, true
	srv.Poll(ctx)
	if got := kinds(srv.last.Events); got != "b:joined" {
		t.Errorf("the join done: events %q, want b protected", got)
	}
	if f.Pair.Primary != "b" || f.Pair.LagColor != "red" || f.Hosts[0].Up {
		t.Errorf("after the kill: pair %+v, host a up %v; want b primary, red (unprotected), a down", f.Pair, f.Hosts[0].Up)
	}
}

// TestServerSSE reads the event stream as a page does: the first frame
// carries the events kept, later ones arrive each poll.
func TestServerSSE(t *testing.T) {
	a := &scripted{s: &Sample{PID: 1, Role: "primary", Epoch: 3}}
	srv, err := NewServer(Config{Sources: []Source{a.source("a")}})
	if err != nil {
		t.Fatal(err)
	}
	srv.Poll(context.Background())
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	resp, err := hs.Client().Get(hs.URL + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	r := bufio.NewReader(resp.Body)
	next := func() Frame {
		t.Helper()
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			if data, ok := strings.CutPrefix(line, "data: "); ok {
				var f Frame
				if err := json.Unmarshal([]byte(data), &f); err != nil {
					t.Fatal(err)
				}
				return f
			}
		}
	}
	if f := next(); len(f.Events) != 1 || f.Hosts[0].Sample.Epoch != 3 {
		t.Fatalf("first frame: events %v, hosts %+v", f.Events, f.Hosts)
	}
	go srv.Poll(context.Background())
	if f := next(); f.Seq != 2 || len(f.Events) != 0 {
		t.Fatalf("second frame: seq %d events %v, want seq 2 and no new event", f.Seq, f.Events)
	}
	page, err := hs.Client().Get(hs.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	page.Body.Close()
	js, err := hs.Client().Get(hs.URL + "/dash.js")
	if err != nil || js.StatusCode != 200 {
		t.Fatalf("dash.js: %v %v", err, js.Status)
	}
	js.Body.Close()
}

// BenchmarkPollToSSE is the server's part of a page update: from the
// start of a poll of two hosts (each with a hold histogram of 100,000
// outputs from 1 µs to 1 s) to the frame read off /events by a client.
// The browser's part (parse and draw) is in bench/e2e's
// TestE2EDashboardFailover, which logs the whole.
func BenchmarkPollToSSE(b *testing.B) {
	h := hdrhistogram.New(1_000, 60_000_000_000, 3)
	for i := int64(0); i < 100_000; i++ {
		h.RecordValue(1_000 + i*i%1_000_000_000)
	}
	a := &scripted{s: &Sample{PID: 1, Role: "primary", Protected: true, Hold: trimmed(h)}}
	c := &scripted{s: &Sample{PID: 2, Role: "secondary", Hold: trimmed(h)}}
	srv, err := NewServer(Config{Sources: []Source{a.source("a"), c.source("b")}})
	if err != nil {
		b.Fatal(err)
	}
	srv.Poll(context.Background())
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	resp, err := hs.Client().Get(hs.URL + "/events")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReaderSize(resp.Body, 1<<20)
	frame := func() {
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				b.Fatal(err)
			}
			if strings.HasPrefix(line, "data: ") {
				return
			}
		}
	}
	frame()
	for b.Loop() {
		srv.Poll(context.Background())
		frame()
	}
}
