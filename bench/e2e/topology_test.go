package e2e

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestUpBuildsTopology checks every device Up makes, where it is and how it
// is wired, that the machine's own namespace gains none of them, and that
// Down removes every namespace.
func TestUpBuildsTopology(t *testing.T) {
	requireBed(t)
	rootBefore := links(t, "")
	topo := upBed(t, "build")

	for _, h := range hosts {
		if !slices.Contains(netnsList(t), topo.Namespace(h)) {
			t.Errorf("ip netns list lacks %s", topo.Namespace(h))
		}
	}

	sw := links(t, topo.Namespace(Switch))
	if br := sw[BridgeName]; br.LinkInfo.InfoKind != "bridge" || !br.up() {
		t.Errorf("switch: %s is %+v, want an up bridge", BridgeName, br)
	}
	for _, port := range []string{"a", "b", "c"} {
		l := sw[port]
		if l.LinkInfo.InfoKind != "veth" || l.Master != BridgeName || !l.up() {
			t.Errorf("switch: port %s is %+v, want an up veth enslaved to %s", port, l, BridgeName)
		}
	}
	for _, ns := range []string{topo.Namespace(Switch), topo.Namespace(HostA), topo.Namespace(HostB), topo.Namespace(Client)} {
		if lo := links(t, ns)["lo"]; !lo.up() {
			t.Errorf("%s: lo is not up: %+v", ns, lo)
		}
	}

	for _, h := range []Host{HostA, HostB} {
		ns := topo.Namespace(h)
		l := links(t, ns)
		cidr := HostAddr(h).String() + "/24"
		if br := l[BridgeName]; br.LinkInfo.InfoKind != "bridge" || !br.up() || !br.hasAddr(cidr) || br.Address != HostMAC(h).String() {
			t.Errorf("%s: %s is %+v, want an up bridge with %s on %s", ns, BridgeName, br, cidr, HostMAC(h))
		}
		if eth := l[LinkName]; eth.LinkInfo.InfoKind != "veth" || eth.Master != BridgeName || !eth.up() {
			t.Errorf("%s: %s is %+v, want an up veth enslaved to %s", ns, LinkName, eth, BridgeName)
		}
		tap := l[TAPName]
		if tap.LinkInfo.InfoKind != "tun" || tap.LinkInfo.InfoData.Type != "tap" || tap.Master != BridgeName || !tap.up() {
			t.Errorf("%s: %s is %+v, want an up TAP enslaved to %s", ns, TAPName, tap, BridgeName)
		}
		if !slices.Contains(tap.Flags, "NO-CARRIER") {
			t.Errorf("%s: %s has carrier with nobody attached: %v", ns, TAPName, tap.Flags)
		}
	}
	c := links(t, topo.Namespace(Client))[LinkName]
	if cidr := HostAddr(Client).String() + "/24"; c.LinkInfo.InfoKind != "veth" || !c.up() || !c.hasAddr(cidr) || c.Address != HostMAC(Client).String() {
		t.Errorf("client: %s is %+v, want an up veth with %s on %s", LinkName, c, HostAddr(Client), HostMAC(Client))
	}

	rootAfter := links(t, "")
	for name := range rootAfter {
		if _, ok := rootBefore[name]; !ok {
			t.Errorf("the machine's own namespace gained device %q during Up", name)
		}
	}

	if err := topo.Down(); err != nil {
		t.Fatalf("Down: %v", err)
	}
	left := netnsList(t)
	for _, h := range hosts {
		ns := topo.Namespace(h)
		if slices.Contains(left, ns) {
			t.Errorf("after Down, ip netns list still has %s", ns)
		}
		if _, err := os.Stat(filepath.Join(netnsDir, ns)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after Down, %s/%s: %v, want it gone", netnsDir, ns, err)
		}
	}
	if err := topo.Down(); err != nil {
		t.Errorf("second Down: %v, want nil", err)
	}
	if _, err := os.Stat(lockPath(topo.Prefix())); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Down, lock %s: %v, want it gone", lockPath(topo.Prefix()), err)
	}
}

// TestReachability proves the wiring carries traffic: the client reaches
// both hosts, the hosts reach each other, and TCP from a reaches b:7070.
func TestReachability(t *testing.T) {
	topo := upBed(t, "reach")
	ctx := testCtx(t, 20*time.Second)
	for _, p := range []struct{ from, to Host }{
		{Client, HostA}, {Client, HostB}, {HostA, HostB}, {HostB, HostA}, {HostA, Client},
	} {
		if err := topo.Ping(ctx, p.from, HostAddr(p.to)); err != nil {
			t.Errorf("%s -> %s: %v", p.from, p.to, err)
		}
	}

	// An address nobody holds must not answer: Ping can fail.
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	if err := topo.Ping(short, Client, netip.MustParseAddr("10.77.0.99")); err == nil {
		t.Errorf("ping from the client to an unused address succeeded")
	}

	srv := startTCPServer(t, topo, HostB, HostAddr(HostB).String()+":7070")
	if err := tcpEcho(ctx, topo, HostA, HostAddr(HostB).String()+":7070"); err != nil {
		t.Fatalf("TCP a -> b:7070: %v", err)
	}
	select {
	case from := <-srv.accepted:
		if !strings.HasPrefix(from.String(), HostAddr(HostA).String()+":") {
			t.Errorf("b accepted a connection from %v, want one from %v", from, HostAddr(HostA))
		}
	case <-time.After(5 * time.Second):
		t.Errorf("b's listener saw no connection")
	}
}

// TestCutLink proves CutLink cuts a from b, silently, in both directions,
// and leaves the client's paths alone, and that HealLink restores the link.
func TestCutLink(t *testing.T) {
	topo := upBed(t, "cut")
	ctx := testCtx(t, 30*time.Second)
	bAddr := HostAddr(HostB).String() + ":7070"
	srv := startTCPServer(t, topo, HostB, bAddr)
	if err := tcpEcho(ctx, topo, HostA, bAddr); err != nil {
		t.Fatalf("before the cut: TCP a -> b: %v", err)
	}
	<-srv.accepted

	for range 2 { // the second call must be harmless
		if err := topo.CutLink(ctx); err != nil {
			t.Fatal(err)
		}
	}
	cutFor := func(d time.Duration) context.Context {
		c, cancel := context.WithTimeout(ctx, d)
		t.Cleanup(cancel)
		return c
	}
	if err := topo.Ping(cutFor(time.Second), HostA, HostAddr(HostB)); err == nil {
		t.Errorf("with the link cut, ping a -> b succeeded")
	}
	if err := topo.Ping(cutFor(time.Second), HostB, HostAddr(HostA)); err == nil {
		t.Errorf("with the link cut, ping b -> a succeeded")
	}
	err := tcpEcho(cutFor(time.Second), topo, HostA, bAddr)
	if err == nil {
		t.Errorf("with the link cut, TCP a -> b succeeded")
	} else if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("with the link cut, TCP a -> b was answered (%v): a pulled cable answers nothing", err)
	}
	select {
	case from := <-srv.accepted:
		t.Errorf("with the link cut, b accepted a connection from %v", from)
	default:
	}
	for _, h := range []Host{HostA, HostB} {
		if err := topo.Ping(ctx, Client, HostAddr(h)); err != nil {
			t.Errorf("with the link cut, client -> %s: %v", h, err)
		}
		if err := topo.Ping(ctx, h, HostAddr(Client)); err != nil {
			t.Errorf("with the link cut, %s -> client: %v", h, err)
		}
	}
	out, err := topo.Run(ctx, Switch, topo.nftPath, "list", "table", "bridge", cutTable)
	if err != nil {
		t.Fatal(err)
	}
	if n := droppedPackets(string(out)); n == 0 {
		t.Errorf("the switch's cut rules dropped no packet:\n%s", out)
	}

	for range 2 {
		if err := topo.HealLink(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := topo.Ping(ctx, HostA, HostAddr(HostB)); err != nil {
		t.Errorf("after HealLink, a -> b: %v", err)
	}
	if err := topo.Ping(ctx, HostB, HostAddr(HostA)); err != nil {
		t.Errorf("after HealLink, b -> a: %v", err)
	}
	if err := tcpEcho(ctx, topo, HostA, bAddr); err != nil {
		t.Errorf("after HealLink, TCP a -> b: %v", err)
	}
	if out, err := topo.Run(ctx, Switch, topo.nftPath, "list", "tables"); err != nil || strings.Contains(string(out), cutTable) {
		t.Errorf("after HealLink, the switch's tables are %q (%v), want no %s", out, err, cutTable)
	}
}

var nftCounter = regexp.MustCompile(`counter packets (\d+)`)

// droppedPackets sums the counters of an `nft list` output.
func droppedPackets(listing string) int {
	total := 0
	for _, m := range nftCounter.FindAllStringSubmatch(listing, -1) {
		n, _ := strconv.Atoi(m[1])
		total += n
	}
	return total
}

// TestPrefixInUse proves a live test bed's prefix cannot be taken over, and
// that another prefix can come up beside it.
func TestPrefixInUse(t *testing.T) {
	topo := upBed(t, "inuse")
	ctx := testCtx(t, 20*time.Second)
	if _, err := Up(ctx, topo.Prefix()); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second Up of live prefix %q: %v, want an in-use error", topo.Prefix(), err)
	}
	// The refused Up must not have touched the live bed.
	if err := topo.Ping(ctx, HostA, HostAddr(HostB)); err != nil {
		t.Errorf("after the refused Up: %v", err)
	}
	other := upBed(t, "inuse2")
	if err := other.Ping(ctx, Client, HostAddr(HostA)); err != nil {
		t.Errorf("second test bed beside the first: %v", err)
	}
}

// TestRunReportsFailure proves a failed command's error names the command
// and carries its output.
func TestRunReportsFailure(t *testing.T) {
	topo := upBed(t, "run")
	ctx := testCtx(t, 10*time.Second)
	out, err := topo.Run(ctx, HostA, "sh", "-c", "echo boom-out; echo boom-err >&2; exit 3")
	var ce *CommandError
	if !errors.As(err, &ce) {
		t.Fatalf("Run of a failing command: %v (output %q), want a *CommandError", err, out)
	}
	msg := err.Error()
	for _, want := range []string{"netns exec " + topo.Namespace(HostA), "sh -c", "boom-out", "boom-err", "exit status 3"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
	out, err = topo.Run(ctx, HostB, "ip", "-4", "-o", "addr", "show", "dev", BridgeName)
	if err != nil || !strings.Contains(string(out), HostAddr(HostB).String()+"/24") {
		t.Errorf("Run in b: %q, %v, want b's address", out, err)
	}

	// A command that outlives its limit is stopped and says so.
	fast, err := Up(ctx, testPrefix("runfast"), WithLogDir(t.TempDir()), WithCommandTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer fast.Down()
	if _, err := fast.Run(ctx, Client, "sleep", "5"); err == nil || !strings.Contains(err.Error(), "deadline") {
		t.Errorf("Run past the command timeout: %v, want a deadline error", err)
	}
}

func TestValidatePrefix(t *testing.T) {
	for _, p := range []string{"ftvm", "ftvm-demo", "a", "x.y_z-1", strings.Repeat("p", 40)} {
		if err := ValidatePrefix(p); err != nil {
			t.Errorf("ValidatePrefix(%q): %v", p, err)
		}
	}
	for _, p := range []string{"", "-x", "a/b", "a b", "..", strings.Repeat("p", 41)} {
		if err := ValidatePrefix(p); err == nil {
			t.Errorf("ValidatePrefix(%q) accepted it", p)
		}
	}
	if _, err := Up(context.Background(), "bad/prefix"); err == nil {
		t.Errorf("Up accepted a bad prefix")
	}
}

func TestFindToolNamesWhatIsMissing(t *testing.T) {
	_, err := findTool("ftvm-no-such-tool", "-V", "ftvm-no-such-package")
	if err == nil || !strings.Contains(err.Error(), "apt-get install ftvm-no-such-package") {
		t.Errorf("findTool of a missing tool: %v, want an error that says how to install it", err)
	}
}
