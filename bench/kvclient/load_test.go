package kvclient

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftvm/ftvm/bench/linearize"
)

func runLoad(t *testing.T, cfg Config) (*Result, []Progress) {
	t.Helper()
	var mu sync.Mutex
	var seen []Progress
	cfg.Progress = func(p Progress) { mu.Lock(); seen = append(seen, p); mu.Unlock() }
	cfg.ProgressInterval = 20 * time.Millisecond
	res, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	t.Logf("%s", res.Stats)
	return res, seen
}

// checkTotals holds whatever the server did: the history and the counters
// must tell the same story.
func checkTotals(t *testing.T, res *Result) {
	t.Helper()
	s := res.Stats
	if s.Sent == 0 || uint64(len(res.History)) != s.Sent {
		t.Fatalf("history holds %d operations, stats say %d were sent", len(res.History), s.Sent)
	}
	if s.Served+s.Unanswered != s.Sent || s.InFlight != 0 {
		t.Fatalf("served %d + unanswered %d != sent %d (in flight %d)", s.Served, s.Unanswered, s.Sent, s.InFlight)
	}
	var retries uint64
	for i, op := range res.History {
		retries += uint64(op.Attempts - 1)
		if !strings.HasPrefix(op.Key, res.Config.KeyPrefix) {
			t.Fatalf("key %q lacks the run's prefix %q", op.Key, res.Config.KeyPrefix)
		}
		if i > 0 && op.Invoke < res.History[i-1].Invoke {
			t.Fatalf("history is not in invoke order at %d", i)
		}
	}
	if retries != s.Retries {
		t.Fatalf("history has %d retries, stats say %d", retries, s.Retries)
	}
	if s.Served > 0 && !(s.P50 <= s.P99 && s.P99 <= s.Max && s.P50 > 0) {
		t.Fatalf("latency percentiles out of order: %v %v %v", s.P50, s.P99, s.Max)
	}
}

func TestRunAgainstAHealthyServerIsLinearizable(t *testing.T) {
	f := startFakeKV(t)
	res, progress := runLoad(t, Config{Addr: f.addr(), RatePerSec: 2000, Concurrency: 16,
		Duration: 300 * time.Millisecond, Retry: fastRetry, RegisterKeys: 3, CounterKeys: 2, Seed: 1})
	checkTotals(t, res)
	if err := linearize.Check(res.History); err != nil {
		t.Fatalf("history against a correct server rejected: %v", err)
	}
	kinds := map[linearize.Kind]int{}
	for _, op := range res.History {
		kinds[op.Kind]++
	}
	if kinds[linearize.Put] == 0 || kinds[linearize.Get] == 0 || kinds[linearize.Inc] == 0 {
		t.Fatalf("the mix lacks a kind: %v", kinds)
	}
	if len(progress) < 2 || !progress[len(progress)-1].Done {
		t.Fatalf("progress called %d times, last %+v; want several and a final Done", len(progress), progress)
	}
	for i := 1; i < len(progress); i++ {
		if progress[i].Sent < progress[i-1].Sent || progress[i].Elapsed < progress[i-1].Elapsed {
			t.Fatalf("progress went backwards: %+v then %+v", progress[i-1], progress[i])
		}
	}
	if line := progress[len(progress)-1].Line(); !strings.Contains(line, "served=") {
		t.Fatalf("progress line %q", line)
	}
}

func TestRunClosedLoop(t *testing.T) {
	f := startFakeKV(t)
	res, _ := runLoad(t, Config{Addr: f.addr(), Concurrency: 4, Duration: 100 * time.Millisecond, Retry: fastRetry})
	checkTotals(t, res)
	if res.Stats.Sent <= 4 || res.Stats.Skipped != 0 {
		t.Fatalf("closed loop sent %d, skipped %d; want more than the concurrency and no skips", res.Stats.Sent, res.Stats.Skipped)
	}
	if err := linearize.Check(res.History); err != nil {
		t.Fatal(err)
	}
}

// outage takes the fake down after `after` for `downFor`, running apply
// (if any) while it is down, and returns how long it really was down.
func outage(f *fakeKV, after, downFor time.Duration, whileDown func()) <-chan time.Duration {
	out := make(chan time.Duration, 1)
	go func() {
		time.Sleep(after)
		f.set(func(f *fakeKV) { f.down = true })
		t0 := time.Now()
		if whileDown != nil {
			whileDown()
		}
		time.Sleep(downFor)
		f.set(func(f *fakeKV) { f.down = false })
		out <- time.Since(t0)
	}()
	return out
}

func TestRunMeasuresTheGapOfAnOutage(t *testing.T) {
	f := startFakeKV(t)
	down := outage(f, 100*time.Millisecond, 150*time.Millisecond, nil)
	res, progress := runLoad(t, Config{Addr: f.addr(), RatePerSec: 1000, Concurrency: 32,
		Duration: 400 * time.Millisecond, Retry: Retry{AttemptTimeout: 20 * time.Millisecond, AttemptsMax: 30}})
	downFor := <-down
	checkTotals(t, res)
	// No reply leaves the fake while it is down; one sent just before may
	// still be read after, so allow half the outage for that.
	if res.Stats.MaxReplyGap < downFor/2 {
		t.Fatalf("largest gap between replies %v, but the server was down for %v", res.Stats.MaxReplyGap, downFor)
	}
	if res.Stats.Retries == 0 || res.Stats.Unanswered != 0 {
		t.Fatalf("%d retries and %d unanswered; want retries that carried every request over the outage", res.Stats.Retries, res.Stats.Unanswered)
	}
	sawSilence := false
	for _, p := range progress {
		sawSilence = sawSilence || p.SinceLastReply >= downFor/2
	}
	if !sawSilence {
		t.Fatal("no progress report showed the server's silence")
	}
	if err := linearize.Check(res.History); err != nil {
		t.Fatalf("an outage without loss must stay linearizable: %v", err)
	}
}

// The planted bug: a "failover" that restores a state from before writes
// that had been acknowledged. The checker must see it in the history.
func TestRunHistoryExposesAFailoverThatLostWrites(t *testing.T) {
	f := startFakeKV(t)
	// The snapshot is taken 100 ms before the outage.
	go func() { time.Sleep(100 * time.Millisecond); f.takeSnapshot() }()
	down := outage(f, 200*time.Millisecond, 50*time.Millisecond, f.restoreSnapshot)
	res, _ := runLoad(t, Config{Addr: f.addr(), RatePerSec: 1000, Concurrency: 16,
		Duration: 450 * time.Millisecond, Retry: Retry{AttemptTimeout: 20 * time.Millisecond, AttemptsMax: 20},
		RegisterKeys: 2, CounterKeys: 2, Seed: 2})
	<-down
	checkTotals(t, res)
	err := linearize.Check(res.History)
	vs := linearize.AsViolations(err)
	if vs == nil {
		t.Fatalf("lost writes not detected; Check returned %v", err)
	}
	t.Logf("first violation: %v", vs.List[0].Error())
}

func TestRunSkipsWhenEveryRequestIsOutstanding(t *testing.T) {
	f := startFakeKV(t)
	f.set(func(f *fakeKV) { f.down = true })
	res, _ := runLoad(t, Config{Addr: f.addr(), RatePerSec: 1000, Concurrency: 2,
		Duration: 100 * time.Millisecond, Retry: Retry{AttemptTimeout: 200 * time.Millisecond, AttemptsMax: 1}})
	checkTotals(t, res)
	if res.Stats.Sent != 2 || res.Stats.Unanswered != 2 || res.Stats.Skipped == 0 {
		t.Fatalf("sent %d, unanswered %d, skipped %d; want 2, 2 and some skipped", res.Stats.Sent, res.Stats.Unanswered, res.Stats.Skipped)
	}
}

func TestRunRefusesBadConfig(t *testing.T) {
	cases := map[string]Config{
		"Addr":         {Duration: time.Second},
		"Duration":     {Addr: "127.0.0.1:7000"},
		"RatePerSec":   {Addr: "127.0.0.1:7000", Duration: time.Second, RatePerSec: -1},
		"Concurrency":  {Addr: "127.0.0.1:7000", Duration: time.Second, Concurrency: concurrencyMax + 1},
		"CounterKeys":  {Addr: "127.0.0.1:7000", Duration: time.Second, RegisterKeys: 1, Mix: Mix{Inc: 1}},
		"RegisterKeys": {Addr: "127.0.0.1:7000", Duration: time.Second, CounterKeys: 1, Mix: Mix{Put: 1}},
		"KeyPrefix":    {Addr: "127.0.0.1:7000", Duration: time.Second, KeyPrefix: "a b"},
		"AttemptsMax":  {Addr: "127.0.0.1:7000", Duration: time.Second, Retry: Retry{AttemptsMax: -1}},
		"ValueBytes":   {Addr: "127.0.0.1:7000", Duration: time.Second, ValueBytes: ValueBytesMax + 1},
	}
	for field, cfg := range cases {
		_, err := Run(context.Background(), cfg)
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("bad %s: got %v, want an error naming it", field, err)
		}
	}
}

func TestRunPadsValues(t *testing.T) {
	f := startFakeKV(t)
	res, _ := runLoad(t, Config{Addr: f.addr(), Concurrency: 4, Duration: 100 * time.Millisecond,
		Mix: Mix{Put: 3, Get: 1}, RegisterKeys: 4, ValueBytes: ValueBytesMax, Seed: 3})
	checkTotals(t, res)
	puts := 0
	for _, op := range res.History {
		if op.Kind == linearize.Put {
			puts++
			if len(op.Value) != ValueBytesMax {
				t.Fatalf("PUT value %q has %d bytes, want %d", op.Value, len(op.Value), ValueBytesMax)
			}
		}
	}
	if puts == 0 {
		t.Fatal("no PUT was sent")
	}
	if err := linearize.Check(res.History); err != nil {
		t.Fatalf("padded values: %v", err)
	}
}
