package shm_test

import (
	"testing"

	"github.com/ftvm/ftvm/rdma/rdmatest"
	"github.com/ftvm/ftvm/rdma/shm"
)

func TestConformance(t *testing.T) {
	rdmatest.Run(t, shm.Provider{Dir: t.TempDir()})
}

func TestTransportConformance(t *testing.T) {
	rdmatest.RunTransport(t, shm.Provider{Dir: t.TempDir()})
}
