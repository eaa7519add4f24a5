package vmm

import "fmt"

// Every device's saved state starts with a one-byte version of its own
// layout, so that devices can change their state independently of the
// snapshot format.

func stateWithVersion(version byte, body []byte) []byte {
	return append([]byte{version}, body...)
}

func stateBody(dev string, b []byte, version byte, bodyBytes int) ([]byte, error) {
	if len(b) < 1 {
		return nil, fmt.Errorf("%s state is empty", dev)
	}
	if b[0] != version {
		return nil, fmt.Errorf("%s state has version %d; this VMM reads version %d", dev, b[0], version)
	}
	if len(b)-1 != bodyBytes {
		return nil, fmt.Errorf("%s state is %d bytes; version %d has %d", dev, len(b)-1, version, bodyBytes)
	}
	return b[1:], nil
}

// noInput and noOutput fill the half of the device interface a device
// does not use; the op table never routes requests to them.
type noInput struct{}

func (noInput) input(e *Exit) (Result, error) {
	return Result{}, fmt.Errorf("%v: device has no inputs", e)
}

type noOutput struct{}

func (noOutput) check(*Exit) int32 { return StatusIO }
func (noOutput) deliver(op uint32, _ uint64, _ []byte) error {
	return fmt.Errorf("device has no outputs (op %d)", op)
}
