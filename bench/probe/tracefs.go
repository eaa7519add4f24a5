package probe

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// tracefsDir is where the kernel's tracing file system is mounted; the
// tracepoints are attached through its events directory.
const tracefsDir = "/sys/kernel/tracing"

// ensureTracefs mounts tracefs when it is not mounted (these machines do
// not mount it by default); mounted is true when this call mounted it.
func ensureTracefs() (mounted bool, err error) {
	if _, err := os.Stat(tracefsDir + "/events"); err == nil {
		return false, nil
	}
	if err := unix.Mount("nodev", tracefsDir, "tracefs", 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
		return false, fmt.Errorf("probe: tracefs is not mounted and mounting it failed: %w (run as root, or: mount -t tracefs nodev %s)", err, tracefsDir)
	}
	if _, err := os.Stat(tracefsDir + "/events"); err != nil {
		return false, fmt.Errorf("probe: tracefs mounted at %s has no events directory: %w (a kernel without tracepoints?)", tracefsDir, err)
	}
	return true, nil
}
