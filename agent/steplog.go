package agent

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/wire"
)

// stepLogEvery bounds how often a refused frame is logged: a peer that
// keeps sending what the node refuses (another VM, another version, an
// oversized checkpoint) must not flood the log, and must not go unseen.
const stepLogEvery = time.Second

// stepErrLog logs the errors Node.Step returns, at most one a
// stepLogEvery, with how many were left out since the last line. Every
// such error says what was wrong and what to do.
type stepErrLog struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

// allow reports whether a line may be logged now, and how many were left
// out since the last one that was.
func (l *stepErrLog) allow() (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if !l.last.IsZero() && now.Sub(l.last) < stepLogEvery {
		l.suppressed++
		return false, 0
	}
	n := l.suppressed
	l.last, l.suppressed = now, 0
	return true, n
}

func (l *stepErrLog) log(lg *slog.Logger, t wire.Type, err error) {
	ok, n := l.allow()
	if !ok {
		return
	}
	level := slog.LevelWarn
	if errors.Is(err, lockstep.ErrStaleEpoch) {
		// Late frames of an older epoch are expected after a failover.
		level = slog.LevelInfo
	}
	lg.Log(context.Background(), level, "frame from the peer refused", "type", t.String(), "err", err, "refused since the last such line", n)
}
