package vmm

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// NICBackend moves Ethernet frames between the VM's NIC and the world.
// ReadFrame and WriteFrame may be called concurrently.
type NICBackend interface {
	// WriteFrame sends one frame.
	WriteFrame(frame []byte) error
	// ReadFrame blocks until a frame arrives and copies it into buf,
	// returning its length. After Close it returns net.ErrClosed (or an
	// error wrapping it).
	ReadFrame(buf []byte) (int, error)
	Close() error
}

// nicRXQueueFrames bounds the frames waiting for the guest; more are
// dropped, as a real NIC drops when its ring is full.
const nicRXQueueFrames = 256

// nicReadErrorBackoff paces the reader after a backend error that is not
// a close (an ICMP error surfacing on a UDP socket, say).
const nicReadErrorBackoff = 10 * time.Millisecond

// nicDevice is the paravirtual NIC: TX an output, RX/WAIT/MAC inputs. A
// reader goroutine moves frames from the backend into a bounded queue; the
// vCPU thread takes them from there.
type nicDevice struct {
	backend   NICBackend
	mac       [6]byte
	rx        chan []byte
	interrupt <-chan struct{} // a pause or stop request ends a WAIT early

	// head is a frame WAIT took off the queue that RX has not consumed yet.
	// Only the vCPU thread touches it.
	head []byte

	dropped   atomic.Uint64 // frames lost because the queue was full
	closeOnce sync.Once
	done      chan struct{}
}

func newNIC(backend NICBackend, mac [6]byte, interrupt <-chan struct{}) *nicDevice {
	if backend == nil {
		backend = newNullNIC()
	}
	n := &nicDevice{
		backend:   backend,
		mac:       mac,
		rx:        make(chan []byte, nicRXQueueFrames),
		interrupt: interrupt,
		done:      make(chan struct{}),
	}
	go n.readLoop()
	return n
}

func (n *nicDevice) readLoop() {
	defer close(n.done)
	for {
		buf := make([]byte, NICFrameMaxBytes+4) // room to spot oversized frames
		k, err := n.backend.ReadFrame(buf)
		if err != nil {
			if isClosed(err) {
				return
			}
			time.Sleep(nicReadErrorBackoff)
			continue
		}
		if k > NICFrameMaxBytes || k < nicFrameMinBytes {
			n.dropped.Add(1)
			continue
		}
		select {
		case n.rx <- buf[:k]:
		default:
			n.dropped.Add(1)
		}
	}
}

func (n *nicDevice) close() error {
	var err error
	n.closeOnce.Do(func() {
		err = n.backend.Close()
		<-n.done
	})
	return err
}

func (n *nicDevice) input(e *Exit) (Result, error) {
	switch e.Op {
	case OpNICMAC:
		return Result{Data: append([]byte(nil), n.mac[:]...)}, nil
	case OpNICRX:
		if n.head == nil {
			select {
			case f := <-n.rx:
				n.head = f
			default:
				return Result{}, nil
			}
		}
		f := n.head
		n.head = nil
		k := min(len(f), int(e.Len))
		return Result{Value: uint64(k), Data: f[:k]}, nil
	case OpNICWait:
		if n.head != nil {
			return Result{Value: 1}, nil
		}
		timeout := time.Duration(min(e.Arg, nicWaitMaxNs))
		select {
		case f := <-n.rx:
			n.head = f
			return Result{Value: 1}, nil
		default:
		}
		if timeout == 0 {
			return Result{}, nil
		}
		t := time.NewTimer(timeout)
		defer t.Stop()
		select {
		case f := <-n.rx:
			n.head = f
			return Result{Value: 1}, nil
		case <-t.C:
		case <-n.interrupt:
		}
		return Result{}, nil
	}
	return Result{}, fmt.Errorf("%v: not a NIC input", e)
}

func (n *nicDevice) check(*Exit) int32 { return StatusOK }

func (n *nicDevice) deliver(_ uint32, _ uint64, frame []byte) error {
	return n.backend.WriteFrame(frame)
}

const nicStateVersion = 1

// saveState keeps the MAC the guest was told. Frames queued but not yet
// read are not saved: the network may lose frames, and the restored VM
// gets its own backend.
func (n *nicDevice) saveState() ([]byte, error) {
	return stateWithVersion(nicStateVersion, n.mac[:]), nil
}

func (n *nicDevice) restoreState(b []byte) error {
	body, err := stateBody("nic", b, nicStateVersion, 6)
	if err != nil {
		return err
	}
	copy(n.mac[:], body)
	n.head = nil
	return nil
}

// nullNIC is the backend of a VM configured without a network: frames sent
// go nowhere and none ever arrive.
type nullNIC struct{ closed chan struct{} }

func newNullNIC() *nullNIC { return &nullNIC{closed: make(chan struct{})} }

func (z *nullNIC) WriteFrame([]byte) error { return nil }
func (z *nullNIC) ReadFrame([]byte) (int, error) {
	<-z.closed
	return 0, errNICClosed
}
func (z *nullNIC) Close() error {
	select {
	case <-z.closed:
	default:
		close(z.closed)
	}
	return nil
}

var errNICClosed = errors.New("NIC backend closed")
