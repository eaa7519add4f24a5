package vmm

import (
	"crypto/rand"
	"fmt"
	"io"
)

// entropyDevice fills the guest's buffer with random bytes (crypto/rand
// unless a test gives another reader).
type entropyDevice struct {
	noOutput
	r io.Reader
}

func newEntropy(r io.Reader) *entropyDevice {
	if r == nil {
		r = rand.Reader
	}
	return &entropyDevice{r: r}
}

func (d *entropyDevice) input(e *Exit) (Result, error) {
	buf := make([]byte, e.Len)
	if _, err := io.ReadFull(d.r, buf); err != nil {
		return Result{}, fmt.Errorf("entropy source: %w", err)
	}
	return Result{Data: buf}, nil
}

const entropyStateVersion = 1

func (d *entropyDevice) saveState() ([]byte, error) {
	return stateWithVersion(entropyStateVersion, nil), nil
}

func (d *entropyDevice) restoreState(b []byte) error {
	_, err := stateBody("entropy", b, entropyStateVersion, 0)
	return err
}
