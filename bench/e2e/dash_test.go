package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/ftvm/ftvm/bench/dash"
	"github.com/ftvm/ftvm/bench/kvclient"
	"github.com/ftvm/ftvm/internal/testutil"
)

// dashMetricsPort is where the daemons of TestE2EDashboardFailover serve
// /metrics, on their host's address.
const dashMetricsPort = 9100

// chromiumFlags start Debian's chromium headless for a test: no sandbox
// (root), no GPU, and nothing that reaches out to the network.
var chromiumFlags = []string{"headless", "no-sandbox", "disable-gpu", "disable-background-networking",
	"disable-component-update", "disable-sync", "no-first-run"}

// browser starts headless chromium with a fresh profile and returns a
// chromedp context on a new tab.
func browser(t *testing.T, ctx context.Context) context.Context {
	t.Helper()
	path := ""
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		testutil.SkipMissing(t, errors.New("chromium is not installed (apt-get install chromium; .ci/run installs it)"), testutil.Netns)
	}
	opts := []chromedp.ExecAllocatorOption{chromedp.ExecPath(path), chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1200, 860)}
	for _, f := range chromiumFlags {
		opts = append(opts, chromedp.Flag(f, true))
	}
	actx, cancel := chromedp.NewExecAllocator(ctx, opts...)
	t.Cleanup(cancel)
	bctx, cancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	t.Cleanup(cancel)
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("starting %s: %v", path, err)
	}
	return bctx
}

// startDashCommand runs `ftvm dash` with args until the test ends and
// returns the page's URL, which it prints first.
func startDashCommand(t *testing.T, ctx context.Context, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, ftvmBinary(t), append([]string{"dash"}, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil && ctx.Err() == nil {
			t.Errorf("ftvm dash: %v\n%s", err, stderr.String())
		}
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("ftvm dash printed no URL: %v\n%s", err, stderr.String())
	}
	// "ftvm dash: serving http://127.0.0.1:PORT/ (watching ...)"
	_, rest, ok := strings.Cut(line, "serving ")
	url, _, _ := strings.Cut(rest, " ")
	if !ok || !strings.HasPrefix(url, "http://") {
		t.Fatalf("ftvm dash said %q, want its URL", line)
	}
	go io.Copy(io.Discard, out)
	return url
}

// scrape reads host h's /metrics from inside its namespace.
func scrape(t *testing.T, ctx context.Context, c *Cluster, h Host) map[string]float64 {
	t.Helper()
	cl := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return c.Topo.Dial(ctx, h, network, addr)
	}}, Timeout: 5 * time.Second}
	resp, err := cl.Get("http://" + c.MetricsAddr(h) + "/metrics")
	if err != nil {
		t.Fatalf("scraping host %s: %v", h, err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("host %s's /metrics: %v", h, err)
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.Metric {
			key := name
			for _, l := range m.Label {
				if l.GetName() != "vm" {
					key += fmt.Sprintf("{%s=%s}", l.GetName(), l.GetValue())
				}
			}
			switch {
			case m.Gauge != nil:
				out[key] = m.Gauge.GetValue()
			case m.Counter != nil:
				out[key] = m.Counter.GetValue()
			case m.Histogram != nil:
				out[key+"_count"] = float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return out
}

// TestE2EDashboardFailover opens the dashboard of a real pair under load
// in headless chromium, kills the primary, and checks that the page shows
// the failover and the new secondary's join, and that its numbers are
// those /metrics serves at the same moment. The screenshot is saved in
// the test's artifact directory (go test -artifacts), and to
// $FTVM_DASH_SCREENSHOT when set (the README's picture).
func TestE2EDashboardFailover(t *testing.T) {
	// The test is of the page, not of noticing a silent peer: chromium's
	// start beside the pair on two cores broke it by itself with the
	// 100 ms default (a killed primary's sockets close at once anyway).
	c := newTestCluster(t, "dash", ClusterConfig{MetricsPort: dashMetricsPort,
		Flags: []string{"--heartbeat-timeout", "300ms"}})
	ctx := testCtx(t, 3*time.Minute)
	bctx := browser(t, ctx)

	if _, err := c.StartPrimary(HostA); err != nil {
		t.Fatal(err)
	}
	if _, err := c.StartSecondary(HostB, HostA); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Await(ctx, HostA, "protected", Protected); err != nil {
		t.Fatal(err)
	}
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	loadDone := make(chan error, 1)
	go func() {
		lc := testLoad(t)
		lc.Addr = net.JoinHostPort(VMAddr, "7000")
		lc.Duration = 2 * time.Minute
		loadDone <- c.Topo.InNamespace(Client, func() error {
			_, err := kvclient.Run(loadCtx, lc)
			return err
		})
	}()

	// The dashboard as a user runs it: ftvm dash, in this namespace,
	// reading both hosts' control sockets.
	url := startDashCommand(t, ctx, "--control", "a="+c.ControlPath(HostA)+",b="+c.ControlPath(HostB), "--listen", "127.0.0.1:0")

	wait := func(what, expr string, d time.Duration) {
		t.Helper()
		if _, err := chromedp.Run(bctx, chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(d), chromedp.WithPollingInterval(50*time.Millisecond))); err != nil {
			page, _ := chromedp.Run(bctx, chromedp.Evaluate[string](`document.body.innerText`))
			t.Fatalf("the page did not show %s within %v: %v\npage:\n%s", what, d, err, page)
		}
	}
	if err := chromedp.Do(bctx, chromedp.Navigate(url)); err != nil {
		t.Fatal(err)
	}
	// Live data: hold latencies of some intervals (4 s), a protected
	// primary.
	wait("live hold latencies", `window.ftvm && window.ftvm.points.filter(p => p.n > 0).length >= 16`, 30*time.Second)
	wait("host a as a protected primary", `document.querySelector('.host[data-host="a"] [data-field="role"]').textContent == "primary" && document.querySelector('.host[data-host="a"] [data-field="protected"]').textContent == "yes"`, 10*time.Second)

	if err := c.Kill(HostA); err != nil {
		t.Fatal(err)
	}
	wait("the failover event", `document.querySelector('#events li[data-kind="failover"][data-host="b"]') !== null`, 15*time.Second)
	wait("host a down", `document.querySelector('.host[data-host="a"]').classList.contains("down")`, 5*time.Second)
	if _, err := c.StartSecondary(HostA, HostB); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Await(ctx, HostB, "protected again", Protected); err != nil {
		t.Fatal(err)
	}
	wait("the new secondary's join", `document.querySelector('#events li[data-kind="joined"][data-host="b"]') !== null`, 10*time.Second)
	wait("hold latencies after the join", `(() => { const p = window.ftvm.points; return p.length > 12 && p.slice(-12).every(x => x.n > 0 && x.primary == "b"); })()`, 15*time.Second)

	// The same moment: /metrics before, a frame from a poll that began
	// after it, /metrics after. Epoch and failovers cannot move in
	// between; the count of timed outputs lies between the two scrapes.
	before := scrape(t, ctx, c, HostB)
	seq0, err := chromedp.Run(bctx, chromedp.Evaluate[int](`window.ftvm.last().seq`))
	if err != nil {
		t.Fatal(err)
	}
	wait("two more frames", fmt.Sprintf(`window.ftvm.last().seq >= %d`, seq0+2), 5*time.Second)
	shown, err := chromedp.Run(bctx, chromedp.Evaluate[map[string]string](`(() => { const o = {}; for (const e of document.querySelectorAll('.host[data-host="b"] [data-field]')) o[e.dataset.field] = e.textContent; return o; })()`))
	if err != nil {
		t.Fatal(err)
	}
	after := scrape(t, ctx, c, HostB)
	num := func(field string) float64 {
		v, err := strconv.ParseFloat(shown[field], 64)
		if err != nil {
			t.Fatalf("the page shows %s = %q for host b: not a number", field, shown[field])
		}
		return v
	}
	t.Logf("page, host b: %v", shown)
	for _, m := range []struct{ field, metric string }{{"epoch", "ftvm_epoch"}, {"failovers", "ftvm_failovers_total"}, {"divergences", "ftvm_divergences_total"}, {"joins", "ftvm_joins_total"}} {
		if got := num(m.field); got != before[m.metric] || got != after[m.metric] {
			t.Errorf("page shows %s %v for host b; /metrics %s %v before, %v after", m.field, got, m.metric, before[m.metric], after[m.metric])
		}
	}
	if before["ftvm_failovers_total"] != 1 || before["ftvm_role{role=primary}"] != 1 || shown["role"] != "primary" {
		t.Errorf("host b: failovers %v, role=primary %v in /metrics, role %q on the page; want it to have taken over", before["ftvm_failovers_total"], before["ftvm_role{role=primary}"], shown["role"])
	}
	lo, hi, got := before["ftvm_output_hold_seconds_count"], after["ftvm_output_hold_seconds_count"], num("hold_count")
	if got < lo || got > hi || hi == 0 {
		t.Errorf("page shows %v outputs timed on host b; /metrics had %v before and %v after", got, lo, hi)
	}

	shot, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join(t.ArtifactDir(), "dashboard-failover.png"), os.Getenv("FTVM_DASH_SCREENSHOT")} {
		if p == "" {
			continue
		}
		if err := os.WriteFile(p, shot, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: %s (%d bytes)", p, len(shot))
	}
	lat, err := chromedp.Run(bctx, chromedp.Evaluate[[]float64](`window.ftvm.updateLatencies`))
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(lat)
	if len(lat) < 10 {
		t.Fatalf("the page drew %d frames", len(lat))
	}
	t.Logf("page update latency, poll start to drawn, over %d frames: p50 %.0f ms, p99 %.0f ms, max %.0f ms (poll every %v)",
		len(lat), lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1], dash.DefaultPollInterval)
	stopLoad()
	<-loadDone
}
