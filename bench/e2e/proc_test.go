package e2e

import (
	"context"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// waitForOutput polls p's logs until they contain want.
func waitForOutput(t *testing.T, p *Proc, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(p.Tail(20), want) {
		if time.Now().After(deadline) {
			t.Fatalf("%v did not print %q within 5s:\n%s", p, want, p.Tail(20))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func signalOf(t *testing.T, st *os.ProcessState) syscall.Signal {
	t.Helper()
	ws, ok := st.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() {
		return 0
	}
	return ws.Signal()
}

func TestProc(t *testing.T) {
	topo := upBed(t, "proc")
	ctx := testCtx(t, 30*time.Second)

	t.Run("exit status and logs", func(t *testing.T) {
		p, err := topo.Start(ctx, HostB, "sh", "-c", "ip -4 -o addr show dev br0; echo to-stderr >&2; exit 3")
		if err != nil {
			t.Fatal(err)
		}
		st, err := p.Wait()
		if err != nil {
			t.Fatal(err)
		}
		if st.ExitCode() != 3 {
			t.Errorf("%v: %v, want exit status 3", p, st)
		}
		tail := p.Tail(5)
		for _, want := range []string{HostAddr(HostB).String() + "/24", "to-stderr", p.StdoutPath(), p.StderrPath()} {
			if !strings.Contains(tail, want) {
				t.Errorf("Tail lacks %q:\n%s", want, tail)
			}
		}
		if again, _ := p.Wait(); again != st {
			t.Errorf("second Wait: %v, want %v", again, st)
		}
	})

	t.Run("tail keeps the last lines", func(t *testing.T) {
		p, err := topo.Start(ctx, Client, "seq", "1", "1000")
		if err != nil {
			t.Fatal(err)
		}
		if st, err := p.Wait(); err != nil || !st.Success() {
			t.Fatalf("%v: %v %v", p, st, err)
		}
		tail := p.Tail(3)
		if !strings.Contains(tail, "\n998\n999\n1000\n") || strings.Contains(tail, "\n997\n") {
			t.Errorf("Tail(3) of seq 1 1000:\n%s", tail)
		}
	})

	t.Run("stop asks first", func(t *testing.T) {
		p, err := topo.Start(ctx, HostA, "sh", "-c", `trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.05; done`)
		if err != nil {
			t.Fatal(err)
		}
		waitForOutput(t, p, "ready")
		st, err := p.Stop(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if st.ExitCode() != 7 || !strings.Contains(p.Tail(5), "got-term") {
			t.Errorf("%v after Stop: %v, want exit status 7 from its TERM trap\n%s", p, st, p.Tail(5))
		}
	})

	t.Run("stop kills after the grace period", func(t *testing.T) {
		p, err := topo.Start(ctx, HostA, "sh", "-c", `trap '' TERM; echo ready; while :; do sleep 0.05; done`)
		if err != nil {
			t.Fatal(err)
		}
		waitForOutput(t, p, "ready")
		st, err := p.Stop(200 * time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if sig := signalOf(t, st); sig != syscall.SIGKILL {
			t.Errorf("%v ignoring SIGTERM, after Stop: %v, want killed by SIGKILL", p, st)
		}
	})

	t.Run("kill", func(t *testing.T) {
		p, err := topo.Start(ctx, HostB, "sleep", "60")
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-p.Done():
			t.Fatalf("%v ended before Kill", p)
		default:
		}
		if err := p.Kill(); err != nil {
			t.Fatal(err)
		}
		st, err := p.Wait()
		if err != nil {
			t.Fatal(err)
		}
		if sig := signalOf(t, st); sig != syscall.SIGKILL {
			t.Errorf("%v after Kill: %v, want killed by SIGKILL", p, st)
		}
		if err := p.Kill(); err != nil {
			t.Errorf("Kill after exit: %v, want nil", err)
		}
	})

	t.Run("context bounds the life", func(t *testing.T) {
		short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		p, err := topo.Start(short, Client, "sleep", "60")
		if err != nil {
			t.Fatal(err)
		}
		st, err := p.Wait()
		if err != nil {
			t.Fatal(err)
		}
		if sig := signalOf(t, st); sig != syscall.SIGKILL {
			t.Errorf("%v past its context: %v, want killed by SIGKILL", p, st)
		}
	})

	t.Run("missing program", func(t *testing.T) {
		const missing = "/nonexistent/ftvm-no-such-program"
		p, err := topo.Start(ctx, HostA, missing)
		if err != nil {
			t.Fatal(err) // ip starts; it is ip that fails to exec
		}
		st, err := p.Wait()
		if err != nil {
			t.Fatal(err)
		}
		if st.Success() || !strings.Contains(p.Tail(5), missing) {
			t.Errorf("%v of a missing program: %v, want a failure that names it\n%s", p, st, p.Tail(5))
		}
	})
}

// TestDownKillsProcesses proves Down ends what still runs in the test bed.
func TestDownKillsProcesses(t *testing.T) {
	topo := upBed(t, "downkill")
	ctx := testCtx(t, 20*time.Second)
	p, err := topo.Start(ctx, HostB, "sleep", "60")
	if err != nil {
		t.Fatal(err)
	}
	if err := topo.Down(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	case <-time.After(5 * time.Second):
		t.Fatalf("%v still runs 5s after Down", p)
	}
	st, _ := p.Wait()
	if sig := signalOf(t, st); sig != syscall.SIGKILL {
		t.Errorf("%v after Down: %v, want killed by SIGKILL", p, st)
	}
}
