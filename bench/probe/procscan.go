package probe

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// threadsOf lists the thread IDs of process pid.
func threadsOf(pid int) ([]uint32, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil, fmt.Errorf("probe: threads of process %d: %w (is it running?)", pid, err)
	}
	tids := make([]uint32, 0, len(ents))
	for _, e := range ents {
		if n, err := strconv.ParseUint(e.Name(), 10, 32); err == nil {
			tids = append(tids, uint32(n))
		}
	}
	return tids, nil
}

// tapFDsOf lists process pid's file descriptors open on /dev/net/tun.
func tapFDsOf(pid int) ([]uint32, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("probe: file descriptors of process %d: %w", pid, err)
	}
	var fds []uint32
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil || target != "/dev/net/tun" {
			continue
		}
		if n, err := strconv.ParseUint(e.Name(), 10, 32); err == nil {
			fds = append(fds, uint32(n))
		}
	}
	return fds, nil
}
