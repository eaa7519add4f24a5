package kvclient

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftvm/ftvm/bench/linearize"
)

// Bounds and defaults of a load run.
const (
	DefaultConcurrency      = 16
	DefaultRegisterKeys     = 8
	DefaultCounterKeys      = 4
	DefaultProgressInterval = 250 * time.Millisecond
	// DefaultOpsMax bounds the history a run keeps (about 200 bytes an
	// operation); a run stops issuing requests when it is reached.
	DefaultOpsMax = 2_000_000
	// ratePerSecMax keeps the schedule's interval at 1 µs or more.
	ratePerSecMax = 1e6
	// concurrencyMax bounds outstanding requests (a goroutine each).
	concurrencyMax = 4096
	// keysMax is the kvstore's table size (KV_KEYS_MAX).
	keysMax = 4096
	// keyPrefixBytesMax leaves room in a 64-byte key for "r<index>".
	keyPrefixBytesMax = 48
)

// Mix gives the relative weights of the operations a run issues. PUTs go to
// register keys, INCs to counter keys, GETs to either.
type Mix struct{ Put, Get, Inc int }

// DefaultMix is what a run uses when Config.Mix is zero.
var DefaultMix = Mix{Put: 4, Get: 4, Inc: 2}

// Config shapes a load run. Zero fields take the defaults named above.
type Config struct {
	Addr string // the kvstore, "host:port"
	// RatePerSec is how many requests are started per second, on a fixed
	// schedule (open loop). A request due while Concurrency requests are
	// outstanding is skipped and counted. 0: closed loop, Concurrency
	// requests always outstanding.
	RatePerSec float64
	// Concurrency bounds the outstanding requests.
	Concurrency int
	// Duration is how long new requests are started; the run then waits for
	// the outstanding ones (at most AttemptsMax × AttemptTimeout).
	Duration time.Duration
	// OpsMax stops the run early after this many requests.
	OpsMax int
	// RegisterKeys (PUT, GET) and CounterKeys (INC, GET) are how many keys
	// of each sort the run uses.
	RegisterKeys, CounterKeys int
	Mix                       Mix
	// ValueBytes pads every PUT's value to this many bytes (at most 64,
	// the kvstore's bound), for loads that move more data per write; 0
	// leaves the value as short as its unique tag.
	ValueBytes int
	Retry      Retry
	// KeyPrefix starts every key name. The checker needs keys that are
	// absent when the run starts, so the default is random per run.
	KeyPrefix string
	// Seed makes the sequence of operations repeatable (0: random).
	Seed uint64
	// Progress, if set, is called every ProgressInterval from one goroutine
	// while the run goes, and once at the end.
	Progress         func(Progress)
	ProgressInterval time.Duration
}

func (c *Config) setDefaults() {
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.OpsMax == 0 {
		c.OpsMax = DefaultOpsMax
	}
	if c.RegisterKeys == 0 && c.CounterKeys == 0 {
		c.RegisterKeys, c.CounterKeys = DefaultRegisterKeys, DefaultCounterKeys
	}
	if c.Mix == (Mix{}) {
		c.Mix = DefaultMix
	}
	c.Retry = c.Retry.withDefaults()
	if c.KeyPrefix == "" {
		c.KeyPrefix = fmt.Sprintf("k%08x-", rand.Uint32())
	}
	if c.Seed == 0 {
		c.Seed = rand.Uint64()
	}
	if c.ProgressInterval == 0 {
		c.ProgressInterval = DefaultProgressInterval
	}
}

func (c *Config) validate() error {
	switch {
	case c.Addr == "":
		return fmt.Errorf("kvclient: Config.Addr is empty; give the kvstore's host:port")
	case c.RatePerSec < 0 || c.RatePerSec > ratePerSecMax:
		return fmt.Errorf("kvclient: RatePerSec %v is outside 0..%v; give requests per second, or 0 for a closed loop", c.RatePerSec, ratePerSecMax)
	case c.Concurrency < 1 || c.Concurrency > concurrencyMax:
		return fmt.Errorf("kvclient: Concurrency %d is outside 1..%d", c.Concurrency, concurrencyMax)
	case c.Duration <= 0:
		return fmt.Errorf("kvclient: Duration %v must be positive", c.Duration)
	case c.OpsMax < 1:
		return fmt.Errorf("kvclient: OpsMax %d must be positive", c.OpsMax)
	case c.RegisterKeys < 0 || c.CounterKeys < 0 || c.RegisterKeys+c.CounterKeys > keysMax:
		return fmt.Errorf("kvclient: RegisterKeys %d + CounterKeys %d must be within 0..%d (the kvstore's table)", c.RegisterKeys, c.CounterKeys, keysMax)
	case c.Mix.Put < 0 || c.Mix.Get < 0 || c.Mix.Inc < 0:
		return fmt.Errorf("kvclient: Mix %+v has a negative weight", c.Mix)
	case c.Mix.Put > 0 && c.RegisterKeys == 0:
		return fmt.Errorf("kvclient: Mix has PUTs but RegisterKeys is 0")
	case c.Mix.Inc > 0 && c.CounterKeys == 0:
		return fmt.Errorf("kvclient: Mix has INCs but CounterKeys is 0")
	case c.ValueBytes < 0 || c.ValueBytes > ValueBytesMax:
		return fmt.Errorf("kvclient: ValueBytes %d is outside 0..%d (the kvstore's value bound)", c.ValueBytes, ValueBytesMax)
	case c.ProgressInterval < 0:
		return fmt.Errorf("kvclient: ProgressInterval %v is negative", c.ProgressInterval)
	}
	if len(c.KeyPrefix) > keyPrefixBytesMax {
		return fmt.Errorf("kvclient: KeyPrefix %q is longer than %d bytes", c.KeyPrefix, keyPrefixBytesMax)
	}
	if err := checkChars("KeyPrefix", c.KeyPrefix, keyPrefixBytesMax, '!', '~'); err != nil {
		return err
	}
	return c.Retry.validate()
}

// ConfigError is what Run returns for a Config it cannot run.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// Progress is a snapshot of a run for a live display.
type Progress struct {
	Elapsed    time.Duration
	Sent       uint64 // requests started
	Served     uint64 // requests answered (ERR included)
	Errors     uint64 // of those, ERR answers
	Unanswered uint64 // requests given up after every attempt
	InFlight   int64  // requests outstanding now
	Retries    uint64 // sends beyond the first
	Skipped    uint64 // scheduled requests not sent: Concurrency outstanding
	// ServedPerSec is the answer rate over the last progress interval.
	ServedPerSec float64
	// SinceLastReply is how long the server has been silent (0 before the
	// first reply); MaxReplyGap is the longest silence between two replies.
	SinceLastReply, MaxReplyGap time.Duration
	Done                        bool
}

// Line renders p on one line for a terminal status display.
func (p Progress) Line() string {
	return fmt.Sprintf("t=%5.1fs sent=%d served=%d (%.0f/s) err=%d inflight=%d unanswered=%d retries=%d skipped=%d silent=%s maxgap=%s",
		p.Elapsed.Seconds(), p.Sent, p.Served, p.ServedPerSec, p.Errors, p.InFlight, p.Unanswered, p.Retries, p.Skipped,
		p.SinceLastReply.Round(time.Millisecond), p.MaxReplyGap.Round(time.Millisecond))
}

// Stats are the totals of a run.
type Stats struct {
	Progress // the final snapshot
	// Latency percentiles of answered requests, first send to reply.
	P50, P90, P99, P999, Max time.Duration
	// MaxReplyGapStart is when the longest silence began, on the client's
	// clock (Result.Origin + MaxReplyGapStart in wall time).
	MaxReplyGapStart time.Duration
	Counters         Counters
}

func (s Stats) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "served %d of %d requests in %.2fs (%d ERR), %d unanswered after all attempts, %d retries, %d skipped\n",
		s.Served, s.Sent, s.Elapsed.Seconds(), s.Errors, s.Unanswered, s.Retries, s.Skipped)
	fmt.Fprintf(&b, "latency p50 %v p90 %v p99 %v p99.9 %v max %v\n", s.P50, s.P90, s.P99, s.P999, s.Max)
	fmt.Fprintf(&b, "largest gap between replies %v, from t=%v; stray replies %d, malformed %d, mismatched %d",
		s.MaxReplyGap, s.MaxReplyGapStart, s.Counters.Stray, s.Counters.Malformed, s.Counters.Mismatched)
	return b.String()
}

// Result is what a run produced.
type Result struct {
	// History holds every request the run started, in invoke order, with
	// times in nanoseconds since Origin.
	History []linearize.Op
	Origin  time.Time
	Stats   Stats
	Config  Config // with the defaults filled in
}

// runState is shared by the goroutines of one run.
type runState struct {
	sent, served, errors, unanswered, retries, skipped atomic.Uint64
	inFlight                                           atomic.Int64

	mu      sync.Mutex
	history []linearize.Op // mu must be held

	failOnce sync.Once
	err      error // written once under failOnce, read after the run
}

// Run drives a load against the kvstore at cfg.Addr until cfg.Duration has
// passed (or ctx ends), waits for the outstanding requests, and returns the
// history and totals. An error means the run could not start.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, &ConfigError{Err: err}
	}
	c, err := Dial(cfg.Addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()

	var st runState
	gen := newOpGen(cfg)
	sem := make(chan struct{}, cfg.Concurrency)
	var wg sync.WaitGroup
	launch := func() {
		st.sent.Add(1)
		st.inFlight.Add(1)
		req := gen.next()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			// Cancelling ctx ends outstanding requests with unknown outcomes.
			op, err := c.Do(ctx, req, cfg.Retry)
			st.inFlight.Add(-1)
			if err != nil { // an invalid request: validate let a bad Config through
				st.failOnce.Do(func() { st.err = err })
				return
			}
			st.retries.Add(uint64(op.Attempts - 1))
			switch op.Outcome {
			case linearize.Unknown:
				st.unanswered.Add(1)
			case linearize.Failed:
				st.served.Add(1)
				st.errors.Add(1)
			default:
				st.served.Add(1)
			}
			st.mu.Lock()
			st.history = append(st.history, op)
			st.mu.Unlock()
		}()
	}

	progressDone := make(chan struct{})
	var progressWG sync.WaitGroup
	if cfg.Progress != nil {
		progressWG.Add(1)
		go func() {
			defer progressWG.Done()
			t := time.NewTicker(cfg.ProgressInterval)
			defer t.Stop()
			var lastServed uint64
			lastAt := time.Now()
			for {
				select {
				case <-progressDone:
					return
				case now := <-t.C:
					p := snapshot(c, &st)
					p.ServedPerSec = float64(p.Served-lastServed) / now.Sub(lastAt).Seconds()
					lastServed, lastAt = p.Served, now
					cfg.Progress(p)
				}
			}
		}()
	}

	runCtx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	start := time.Now()
	more := func() bool { return int(st.sent.Load()) < cfg.OpsMax }
	if cfg.RatePerSec == 0 {
		closedLoop(runCtx, sem, launch, more)
	} else {
		interval := time.Duration(float64(time.Second) / cfg.RatePerSec)
		openLoop(runCtx, start, interval, sem, launch, more, &st.skipped)
	}
	wg.Wait()
	close(progressDone)
	progressWG.Wait()

	final := snapshot(c, &st)
	final.Done = true
	final.ServedPerSec = float64(final.Served) / time.Since(start).Seconds()
	if cfg.Progress != nil {
		cfg.Progress(final)
	}
	if st.err != nil {
		return nil, st.err
	}
	sort.Slice(st.history, func(i, j int) bool { return st.history[i].Invoke < st.history[j].Invoke })
	res := &Result{History: st.history, Origin: c.Origin(), Config: cfg}
	res.Stats = summarize(final, st.history, c)
	return res, nil
}

// closedLoop keeps every slot of sem busy until ctx ends or more says stop.
func closedLoop(ctx context.Context, sem chan struct{}, launch func(), more func() bool) {
	for more() {
		select {
		case sem <- struct{}{}:
			launch()
		case <-ctx.Done():
			return
		}
	}
}

// openLoop starts the n-th request at start + n×interval until ctx ends or
// more says stop; a request due while no slot of sem is free is skipped
// and counted. When the loop falls behind it catches up rather than shift
// the schedule.
func openLoop(ctx context.Context, start time.Time, interval time.Duration, sem chan struct{}, launch func(), more func() bool, skipped *atomic.Uint64) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for due := 0; more(); {
		for ; time.Duration(due)*interval <= time.Since(start) && more(); due++ {
			select {
			case sem <- struct{}{}:
				launch()
			default:
				skipped.Add(1)
			}
		}
		timer.Reset(time.Until(start.Add(time.Duration(due) * interval)))
		select {
		case <-timer.C:
		case <-ctx.Done():
			return
		}
	}
}

func snapshot(c *Client, st *runState) Progress {
	now := c.Now()
	last, maxGap, _ := c.replyGaps()
	p := Progress{
		Elapsed:     time.Duration(now),
		Sent:        st.sent.Load(),
		Served:      st.served.Load(),
		Errors:      st.errors.Load(),
		Unanswered:  st.unanswered.Load(),
		InFlight:    st.inFlight.Load(),
		Retries:     st.retries.Load(),
		Skipped:     st.skipped.Load(),
		MaxReplyGap: time.Duration(maxGap),
	}
	if last >= 0 {
		p.SinceLastReply = time.Duration(now - last)
	}
	return p
}

func summarize(p Progress, history []linearize.Op, c *Client) Stats {
	s := Stats{Progress: p, Counters: c.Counters()}
	_, _, gapStart := c.replyGaps()
	s.MaxReplyGapStart = time.Duration(gapStart)
	lat := make([]time.Duration, 0, len(history))
	for i := range history {
		if history[i].Outcome != linearize.Unknown {
			lat = append(lat, time.Duration(history[i].Complete-history[i].Invoke))
		}
	}
	if len(lat) == 0 {
		return s
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	at := func(q float64) time.Duration { return lat[int(q*float64(len(lat)-1))] }
	s.P50, s.P90, s.P99, s.P999, s.Max = at(0.50), at(0.90), at(0.99), at(0.999), lat[len(lat)-1]
	return s
}

// opGen picks the next request of a run.
type opGen struct {
	mu     sync.Mutex
	rng    *rand.Rand
	cfg    Config
	writes uint64 // makes every PUT value unique, which the checker uses
}

func newOpGen(cfg Config) *opGen {
	return &opGen{rng: rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)), cfg: cfg}
}

func (g *opGen) next() Request {
	g.mu.Lock()
	defer g.mu.Unlock()
	m := g.cfg.Mix
	register := func() string { return g.cfg.KeyPrefix + "r" + strconv.Itoa(g.rng.IntN(g.cfg.RegisterKeys)) }
	counter := func() string { return g.cfg.KeyPrefix + "c" + strconv.Itoa(g.rng.IntN(g.cfg.CounterKeys)) }
	switch x := g.rng.IntN(m.Put + m.Get + m.Inc); {
	case x < m.Put:
		g.writes++
		v := "w" + strconv.FormatUint(g.writes, 10)
		if n := g.cfg.ValueBytes - len(v); n > 1 {
			// The tag first, so that values stay unique (the checker
			// relies on it); '.' cannot end a decimal tag.
			v += "." + strings.Repeat("x", n-1)
		}
		return Request{Kind: linearize.Put, Key: register(), Value: v}
	case x < m.Put+m.Get:
		if g.rng.IntN(g.cfg.RegisterKeys+g.cfg.CounterKeys) < g.cfg.RegisterKeys {
			return Request{Kind: linearize.Get, Key: register()}
		}
		return Request{Kind: linearize.Get, Key: counter()}
	default:
		return Request{Kind: linearize.Inc, Key: counter()}
	}
}
