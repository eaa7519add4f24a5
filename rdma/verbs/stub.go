//go:build !(ftvm_rdma && cgo && linux)

package verbs

import (
	"net/netip"

	"github.com/ftvm/ftvm/rdma"
)

// Supported reports whether this build has RDMA verbs support.
const Supported = false

// Provider is the verbs provider; in this build it cannot be made.
type Provider struct{}

var _ rdma.Provider = (*Provider)(nil)

// New fails with ErrNotBuilt in this build.
func New(Config) (*Provider, error) { return nil, ErrNotBuilt }

// NewForPeer fails with ErrNotBuilt in this build.
func NewForPeer(netip.Addr) (*Provider, error) { return nil, ErrNotBuilt }

// Name is "rdma".
func (*Provider) Name() string { return "rdma" }

// Open fails with ErrNotBuilt in this build.
func (*Provider) Open(int) (rdma.Endpoint, error) { return nil, ErrNotBuilt }

// Close does nothing in this build.
func (*Provider) Close() error { return nil }
