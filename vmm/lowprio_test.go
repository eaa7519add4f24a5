package vmm

import (
	"fmt"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// threadPolicy is the calling thread's scheduling policy and nice value.
func threadPolicy(t *testing.T) (policy uint32, nice int32) {
	t.Helper()
	a, err := unix.SchedGetAttr(unix.Gettid(), 0)
	if err != nil {
		t.Fatalf("sched_getattr: %v", err)
	}
	return a.Policy, a.Nice
}

// lowPriorityPolicyWrong says what is wrong with the policy AtLowPriority
// gives fn, and with the caller's after it, or "".
func lowPriorityPolicyWrong(t *testing.T) string {
	t.Helper()
	callerPolicy, callerNice := threadPolicy(t)
	var policy uint32
	var nice int32
	AtLowPriority(func() { policy, nice = threadPolicy(t) })
	if p, n := threadPolicy(t); p != callerPolicy || n != callerNice {
		return "the caller's thread was changed"
	}
	if policy != unix.SCHED_IDLE {
		// Nice 19 is not enough: a CPU running a nice-19 thread is
		// busy to the kernel's wake-up placement and load balancer,
		// and a vCPU thread waited behind other threads on the other
		// CPU meanwhile (agent/doc.go, Checkpoints).
		return fmt.Sprintf("fn ran under policy %s at nice %d, want SCHED_IDLE", policyName(policy), nice)
	}
	return ""
}

func policyName(p uint32) string {
	switch p {
	case unix.SCHED_NORMAL:
		return "SCHED_NORMAL"
	case unix.SCHED_IDLE:
		return "SCHED_IDLE"
	case unix.SCHED_BATCH:
		return "SCHED_BATCH"
	}
	return fmt.Sprint(p)
}

// TestAtLowPriorityRunsUnderSchedIdle checks that the work done beside a
// running guest (a live snapshot, its encoding) runs where the kernel
// treats its CPU as idle, and leaves the caller's thread as it was.
func TestAtLowPriorityRunsUnderSchedIdle(t *testing.T) { passes(t, lowPriorityPolicyWrong) }

// TestAtLowPriorityAtNiceOnlyIsCaught plants nice 19 in place of
// SCHED_IDLE: the check must catch it.
func TestAtLowPriorityAtNiceOnlyIsCaught(t *testing.T) {
	caughtWhenPlanted(t, &lowPriorityNiceOnly, lowPriorityPolicyWrong, "AtLowPriority at nice 19")
}

// TestAtLowPriorityLeavesSchedIdleAfterItsBound checks that fn goes on
// at nice 19 once it has run lowPriorityIdleMax under SCHED_IDLE: there
// it gets almost nothing of CPUs others keep busy (a live increment took
// 24 s beside two busy CPUs), while it holds a Go P and keeps the
// collector off.
func TestAtLowPriorityLeavesSchedIdleAfterItsBound(t *testing.T) {
	was := lowPriorityIdleMax
	lowPriorityIdleMax = 5 * time.Millisecond
	defer func() { lowPriorityIdleMax = was }()
	var first, later uint32
	var laterNice int32
	AtLowPriority(func() {
		first, _ = threadPolicy(t)
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			if later, laterNice = threadPolicy(t); later != unix.SCHED_IDLE {
				return
			}
		}
	})
	if first != unix.SCHED_IDLE || later != unix.SCHED_NORMAL || laterNice != lowPriorityNice {
		t.Fatalf("fn ran under %s, then %s at nice %d after %v: want SCHED_IDLE, then SCHED_NORMAL at nice %d", policyName(first), policyName(later), laterNice, lowPriorityIdleMax, lowPriorityNice)
	}
}

// passes fails the test with what check found wrong, if anything.
func passes(t *testing.T, check func(*testing.T) string) {
	t.Helper()
	if why := check(t); why != "" {
		t.Fatal(why)
	}
}

// caughtWhenPlanted runs check with the planted bug *plant on (what it
// plants, for the message): check must find something wrong.
func caughtWhenPlanted(t *testing.T, plant *bool, check func(*testing.T) string, what string) {
	t.Helper()
	*plant = true
	defer func() { *plant = false }()
	if check(t) == "" {
		t.Fatalf("with %s planted the check saw nothing wrong", what)
	}
}
