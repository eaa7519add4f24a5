package verbs

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/ftvm/ftvm/rdma"
)

// ErrNotBuilt is the error of every verbs operation in a build without
// RDMA support (one without the ftvm_rdma build tag, or without cgo).
var ErrNotBuilt = errors.New("verbs: built without RDMA support: rebuild with cgo and -tags ftvm_rdma (needs libibverbs-dev), or use another transport")

// ErrClosed is returned by an endpoint or link used after Close.
var ErrClosed = errors.New("verbs: link closed")

// ErrRevoked is what Err reports on the side that called Revoke; it
// wraps rdma.ErrRevoked.
var ErrRevoked = fmt.Errorf("verbs: the peer may no longer write into this region: %w", rdma.ErrRevoked)

// Config says which device, port and GID a Provider uses.
type Config struct {
	// Device is the RDMA device's name, e.g. "rxe0" or "mlx5_0".
	Device string
	// Port is the device port, counting from 1; 0 means 1.
	Port int
	// Addr is the local IP address whose RoCE v2 GID the endpoints use;
	// the GID is looked up in the port's GID table. The zero Addr takes
	// the port's first IPv4-mapped RoCE v2 GID.
	Addr netip.Addr
	// Netdev is the network device Addr is on (informational; Find sets it).
	Netdev string
}
