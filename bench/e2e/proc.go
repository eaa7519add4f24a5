package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// Limits of Proc.
const (
	// killWait bounds how long Stop waits for a process after SIGKILL; only
	// a process stuck in the kernel outlives it.
	killWait = 10 * time.Second
	// tailMaxBytes bounds how much of the end of each log Tail reads.
	tailMaxBytes = 64 << 10
)

// Proc is a process running in a machine's namespace, with its stdout and
// stderr in files under the test bed's log directory. It runs in a process
// group of its own, and the signals of Kill and Stop go to the whole group.
// Its methods may be called from several goroutines at once.
type Proc struct {
	host       Host
	ns         string
	argv       []string // name and args, as given to Start
	cmd        *exec.Cmd
	stdoutPath string
	stderrPath string

	done    chan struct{}    // closed once the process has been waited for
	state   *os.ProcessState // set before done is closed
	waitErr error            // set before done is closed
}

// Start runs name with args inside a machine's namespace and returns at
// once. ctx bounds the life of the process: when it ends, the group is
// killed. The process outlives neither ctx nor Down (which kills whatever is
// left in the namespaces).
//
//	p, err := topo.Start(ctx, e2e.HostA, daemonPath, daemonArgs...)
//	if err != nil {
//		t.Fatal(err)
//	}
//	defer p.Kill()
//	...
//	st, err := p.Stop(5 * time.Second)
//	if err != nil || !st.Success() {
//		t.Errorf("%v: %v %v\n%s", p, st, err, p.Tail(40))
//	}
func (t *Topology) Start(ctx context.Context, h Host, name string, args ...string) (*Proc, error) {
	base := fmt.Sprintf("%03d-%s-%s", t.procSeq.Add(1), h, logName(name))
	p := &Proc{
		host:       h,
		ns:         t.Namespace(h),
		argv:       append([]string{name}, args...),
		stdoutPath: filepath.Join(t.logDir, base+".stdout"),
		stderrPath: filepath.Join(t.logDir, base+".stderr"),
		done:       make(chan struct{}),
	}
	stdout, err := os.Create(p.stdoutPath)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", p, err)
	}
	defer stdout.Close() // the child has its own copy once started
	stderr, err := os.Create(p.stderrPath)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", p, err)
	}
	defer stderr.Close()

	p.cmd = t.Command(ctx, h, name, args...)
	p.cmd.Stdout, p.cmd.Stderr = stdout, stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p.cmd.Cancel = func() error { return p.signal(syscall.SIGKILL) }
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", p, err)
	}
	go p.wait()
	return p, nil
}

func (p *Proc) wait() {
	err := p.cmd.Wait()
	if p.cmd.ProcessState != nil {
		// It was waited for: how it ended is in the state, not an error.
		err = nil
	}
	p.state, p.waitErr = p.cmd.ProcessState, err
	close(p.done)
}

var logNameUnsafe = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

func logName(name string) string {
	s := logNameUnsafe.ReplaceAllString(filepath.Base(name), "_")
	if len(s) > 32 {
		s = s[:32]
	}
	return s
}

// signal sends sig to the process group, unless the process has been
// waited for (its id may then belong to another process).
func (p *Proc) signal(sig syscall.Signal) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	err := syscall.Kill(-p.cmd.Process.Pid, sig)
	if err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal %v to %s: %w", sig, p, err)
	}
	return nil
}

// Kill sends SIGKILL to the process group, as a sudden death of the host
// would, and returns without waiting; Wait then reports the death. It does
// nothing once the process has exited.
func (p *Proc) Kill() error { return p.signal(syscall.SIGKILL) }

// Stop asks the process group to end (SIGTERM), waits up to grace for the
// process to exit, then kills the group (SIGKILL), and returns how the
// process ended, as Wait does.
func (p *Proc) Stop(grace time.Duration) (*os.ProcessState, error) {
	if err := p.signal(syscall.SIGTERM); err != nil {
		return nil, err
	}
	graceTimer := time.NewTimer(grace)
	defer graceTimer.Stop()
	select {
	case <-p.done:
		return p.Wait()
	case <-graceTimer.C:
	}
	if err := p.signal(syscall.SIGKILL); err != nil {
		return nil, err
	}
	killTimer := time.NewTimer(killWait)
	defer killTimer.Stop()
	select {
	case <-p.done:
		return p.Wait()
	case <-killTimer.C:
		return nil, fmt.Errorf("stop %s: still running %v after SIGKILL", p, killWait)
	}
}

// Wait blocks until the process has exited and returns how it ended: the
// exit code (ExitCode, Success), or the signal that killed it
// (Sys().(syscall.WaitStatus).Signal()). The error is not nil only when the
// process could not be waited for. Wait may be called any number of times.
func (p *Proc) Wait() (*os.ProcessState, error) {
	<-p.done
	return p.state, p.waitErr
}

// Done is closed once the process has exited and been waited for.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Pid returns the process id (also the id of its process group).
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// StdoutPath returns the file that holds the process's standard output.
func (p *Proc) StdoutPath() string { return p.stdoutPath }

// StderrPath returns the file that holds the process's standard error.
func (p *Proc) StderrPath() string { return p.stderrPath }

// String names the process for reports: its command line, host and pid.
func (p *Proc) String() string {
	s := fmt.Sprintf("`%s` in %s (namespace %s", quoteArgs(p.argv), p.host, p.ns)
	if p.cmd != nil && p.cmd.Process != nil {
		s += fmt.Sprintf(", pid %d", p.cmd.Process.Pid)
	}
	return s + ")"
}

// Tail returns the last n lines of the process's stdout and of its stderr,
// each under a header that names the file, for failure reports.
func (p *Proc) Tail(n int) string {
	var b strings.Builder
	for _, path := range []string{p.stdoutPath, p.stderrPath} {
		fmt.Fprintf(&b, "==> %s (last %d lines) <==\n", path, n)
		lines, err := lastLines(path, n)
		if err != nil {
			fmt.Fprintf(&b, "(%v)\n", err)
			continue
		}
		b.Write(lines)
	}
	return b.String()
}

// lastLines returns the last n lines of a file, reading at most its last
// tailMaxBytes, with a final newline.
func lastLines(path string, n int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	off := max(fi.Size()-tailMaxBytes, 0)
	data, err := io.ReadAll(io.NewSectionReader(f, off, fi.Size()-off))
	if err != nil {
		return nil, err
	}
	data = bytes.TrimRight(data, "\n")
	if len(data) == 0 || n <= 0 {
		return nil, nil
	}
	cut := len(data)
	for range n {
		i := bytes.LastIndexByte(data[:cut], '\n')
		if i < 0 {
			cut = -1
			break
		}
		cut = i
	}
	return append(data[cut+1:], '\n'), nil
}
