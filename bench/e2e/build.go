package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// BuildFtvm builds cmd/ftvm of the module rooted at root (with the build
// tags given, if any) into a new temporary directory, and the guests with
// `make guests`, for tests that run the real binary. It returns the
// binary's path; the caller removes filepath.Dir of it when done.
func BuildFtvm(root string, tags ...string) (string, error) {
	dir, err := os.MkdirTemp("", "ftvm-test-bin")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "ftvm")
	args := []string{"build"}
	if len(tags) > 0 {
		args = append(args, "-tags", joinTags(tags))
	}
	cmd := exec.Command("go", append(args, "-o", bin, "./cmd/ftvm")...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("go build ./cmd/ftvm: %v\n%s", err, out)
	}
	cmd = exec.Command("make", "-s", "guests")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return bin, fmt.Errorf("make guests: %v\n%s", err, out)
	}
	return bin, nil
}

func joinTags(tags []string) string {
	s := tags[0]
	for _, t := range tags[1:] {
		s += "," + t
	}
	return s
}
