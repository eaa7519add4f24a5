package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// prefixLock is an flock(2) on a file named after a test bed's prefix. It
// tells a live owner of the prefix, whose namespaces Up must not delete,
// from the leftovers of a crashed run, whose namespaces Up must delete: the
// kernel drops the lock when its holder dies, however it dies.
type prefixLock struct {
	f    *os.File
	path string
}

// lockAttempts bounds the retries when the lock file is replaced under us.
const lockAttempts = 10

func lockPath(prefix string) string {
	return filepath.Join(os.TempDir(), "ftvm-e2e-"+prefix+".lock")
}

func lockPrefix(prefix string) (*prefixLock, error) {
	path := lockPath(prefix)
	for range lockAttempts {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return nil, fmt.Errorf("opening the lock of test bed %q: %w", prefix, err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			holder, _ := os.ReadFile(path)
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, fmt.Errorf("test bed prefix %q is in use by a live run (pid %s holds %s): use another prefix, or wait for that run to end",
					prefix, strings.TrimSpace(string(holder)), path)
			}
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		// release unlinks the file before it unlocks. If that happened
		// between our open and our flock, we hold a file nobody else will
		// open: start again with the one now at path.
		var held, named unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &held); err != nil {
			f.Close()
			return nil, fmt.Errorf("stat %s: %w", path, err)
		}
		if err := unix.Stat(path, &named); err != nil || held.Ino != named.Ino || held.Dev != named.Dev {
			f.Close()
			continue
		}
		if err := f.Truncate(0); err == nil {
			_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
		}
		return &prefixLock{f: f, path: path}, nil
	}
	return nil, fmt.Errorf("locking %s: the file was replaced %d times in a row", path, lockAttempts)
}

func (l *prefixLock) release() error {
	err := os.Remove(l.path)
	if cerr := l.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("releasing %s: %w", l.path, err)
	}
	return nil
}
