//go:build ftvm_rdma && cgo && linux

package verbs

import (
	"testing"

	"github.com/ftvm/ftvm/rdma/rdmatest"
)

// The conformance suite every rdma.Provider passes (rdma/rdmatest), over
// real verbs: the Link contract and the ring protocol on it.
func TestConformance(t *testing.T) {
	rdmatest.Run(t, newProvider(t))
}

// The transport-level part: rdma.Transport over loopback TCP, its control
// lane moved into the peer's ring over verbs.
func TestTransportConformance(t *testing.T) {
	rdmatest.RunTransport(t, newProvider(t))
}
