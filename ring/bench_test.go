package ring_test

import (
	"testing"

	"github.com/ftvm/ftvm/bench/ringbench"
)

// The bodies live in bench/ringbench so that `ftvm bench rings` runs the same
// code; see there for what each one moves and checks.

func BenchmarkRingSPSC(b *testing.B) {
	b.Run("batch=1", func(b *testing.B) { ringbench.SPSC(b, 1) })
	b.Run("batch=16", func(b *testing.B) { ringbench.SPSC(b, 16) })
}

func BenchmarkRecords(b *testing.B) {
	b.Run("64B/batch=1", func(b *testing.B) { ringbench.Records(b, 1) })
	b.Run("64B/batch=16", func(b *testing.B) { ringbench.Records(b, 16) })
}

func BenchmarkChanSPSC(b *testing.B) { ringbench.Chan(b) }

func BenchmarkChanSPSC64B(b *testing.B) { ringbench.Chan64B(b) }

func BenchmarkMutexQueue(b *testing.B) { ringbench.MutexQueue(b) }

func BenchmarkPingPong(b *testing.B) {
	b.Run("ring", ringbench.PingPongRing)
	b.Run("chan", ringbench.PingPongChan)
	b.Run("cacheline", ringbench.PingPongCacheLine)
}
