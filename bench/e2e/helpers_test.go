package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/internal/testutil"
)

// testPrefix names the test bed of one test. It is fixed per test, so that a
// run that crashed leaves namespaces the next run of the same test removes.
func testPrefix(name string) string { return "ftvmt-" + name }

// requireBed skips (or, when FTVM_REQUIRE names netns, fails) the test
// unless this machine can build the test bed.
func requireBed(t *testing.T) {
	t.Helper()
	testutil.Require(t, testutil.Root, testutil.Netns, testutil.TUN)
	if err := CheckTools(); err != nil {
		testutil.SkipMissing(t, fmt.Errorf("the test bed's tools are missing: %v", err), testutil.Netns)
	}
}

// ipPath returns the ip command the package drives.
func ipPath(t *testing.T) string {
	t.Helper()
	path, _, err := findTools()
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// keptDir is a directory for the test's files: a temporary one, or, when
// FTVM_E2E_KEEP names a directory, one under it that outlives the test
// (for reading daemon logs after a run).
func keptDir(t *testing.T, what string) string {
	t.Helper()
	root := os.Getenv("FTVM_E2E_KEEP")
	if root == "" {
		return t.TempDir()
	}
	dir := filepath.Join(root, strings.ReplaceAll(t.Name(), "/", "_"), what)
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// upBed brings up the test bed of the calling test, and has it torn down at
// the end of the test.
func upBed(t *testing.T, name string) *Topology {
	t.Helper()
	requireBed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	topo, err := Up(ctx, testPrefix(name), WithLogDir(keptDir(t, "logs")))
	if err != nil {
		t.Fatalf("Up: %v", err)
	}
	t.Cleanup(func() {
		if err := topo.Down(); err != nil {
			t.Errorf("Down: %v", err)
		}
	})
	return topo
}

// testCtx returns a context that ends after d or with the test.
func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// ipLink is the part of `ip -j -d link show` the tests read.
type ipLink struct {
	IfName   string   `json:"ifname"`
	Flags    []string `json:"flags"`
	Master   string   `json:"master"`
	Address  string   `json:"address"`
	LinkInfo struct {
		InfoKind string `json:"info_kind"`
		InfoData struct {
			Type string `json:"type"`
		} `json:"info_data"`
	} `json:"linkinfo"`
	AddrInfo []struct {
		Family    string `json:"family"`
		Local     string `json:"local"`
		PrefixLen int    `json:"prefixlen"`
	} `json:"addr_info"`
}

func (l ipLink) up() bool { return slices.Contains(l.Flags, "UP") }

func (l ipLink) hasAddr(cidr string) bool {
	for _, a := range l.AddrInfo {
		if a.Family == "inet" && fmt.Sprintf("%s/%d", a.Local, a.PrefixLen) == cidr {
			return true
		}
	}
	return false
}

// links lists the devices of a namespace ("" for the machine's own), by name.
func links(t *testing.T, ns string) map[string]ipLink {
	t.Helper()
	args := []string{"-j", "-d", "addr", "show"}
	if ns != "" {
		args = append([]string{"-n", ns}, args...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), DefaultCommandTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, ipPath(t), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	var list []ipLink
	if err := json.Unmarshal(out, &list); err != nil {
		t.Fatalf("parsing `ip %s`: %v\n%s", strings.Join(args, " "), err, out)
	}
	byName := make(map[string]ipLink, len(list))
	for _, l := range list {
		byName[l.IfName] = l
	}
	return byName
}

// netnsList returns the names `ip netns list` prints.
func netnsList(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command(ipPath(t), "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			names = append(names, f[0]) // "name (id: 3)"
		}
	}
	return names
}

// tcpServer accepts connections in a namespace and echoes one line on each.
type tcpServer struct {
	ln       net.Listener
	accepted chan net.Addr // remote address of each connection accepted
}

func startTCPServer(t *testing.T, topo *Topology, h Host, addr string) *tcpServer {
	t.Helper()
	ln, err := topo.Listen(h, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &tcpServer{ln: ln, accepted: make(chan net.Addr, 16)}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case s.accepted <- c.RemoteAddr():
			default:
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				buf := make([]byte, 64)
				n, _ := c.Read(buf)
				_, _ = c.Write(buf[:n])
			}()
		}
	}()
	return s
}

// tcpEcho connects from a namespace to addr, sends a line and checks that it
// comes back.
func tcpEcho(ctx context.Context, topo *Topology, from Host, addr string) error {
	c, err := topo.Dial(ctx, from, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(d)
	}
	msg := fmt.Sprintf("hello from %s\n", from)
	if _, err := io.WriteString(c, msg); err != nil {
		return fmt.Errorf("write to %s: %w", addr, err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read echo from %s: %w", addr, err)
	}
	if string(got) != msg {
		return fmt.Errorf("echo from %s: got %q, want %q", addr, got, msg)
	}
	return nil
}
