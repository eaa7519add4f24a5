package rdma_test

import (
	"testing"

	"github.com/ftvm/ftvm/rdma/rdmatest"
)

// TestTransportOverTCP runs the transport-level conformance tests with no
// one-sided memory: the control lane stays on tcpfallback.
func TestTransportOverTCP(t *testing.T) {
	rdmatest.RunTransport(t, nil)
}
