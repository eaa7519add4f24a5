// Package limits is the one place that sizes crossing package boundaries
// are set: the largest request of each guest device (the guest ABI,
// vmm/guests/include/ftvm.h), the headers the agent puts around a
// request's bytes in the lockstep log (agent/codec.go), and the bounds
// of the wire format derived from both (lockstep/wire).
//
// It is a leaf that imports nothing, so that vmm (which must never import
// lockstep) and lockstep/wire (which must not depend on the VMM) take
// their bounds from the same constants: the largest request a guest may
// legally make then always fits the wire by construction, and a change to
// a device limit moves the wire's bound with it. The compile-time checks
// at the bottom fail the build if a bound is ever set by hand below what
// it must carry.
package limits

// The guest devices' limits on one request, in bytes (ftvm.h's
// FTVM_CONSOLE_MAX, FTVM_ENTROPY_MAX, FTVM_NIC_MTU_FRAME, FTVM_BLOCK_MAX;
// vmm/devices_test.go checks that they agree with the header).
const (
	ConsoleMaxBytes  = 4096
	EntropyMaxBytes  = 4096
	NICFrameMaxBytes = 1514
	BlockMaxBytes    = 65536
)

// DeviceDataMaxBytes is the most data one device exit carries either way:
// the largest of the limits above (a block read or write).
const DeviceDataMaxBytes = BlockMaxBytes

// The agent's headers around a request's bytes in the log (agent/codec.go
// lays them out): an input carries the status, value, request arg and len
// the guest saw; an output its request arg.
const (
	InputHeaderBytes  = 24
	OutputHeaderBytes = 8
)

// The wire's bounds on an entry's and an output's data: the largest
// device request plus its header.
const (
	EntryDataMaxBytes  = DeviceDataMaxBytes + InputHeaderBytes
	OutputDataMaxBytes = DeviceDataMaxBytes + OutputHeaderBytes
)

// Compile-time checks: converting a negative constant to uint does not
// compile, so each line fails the build if its limit outgrows
// DeviceDataMaxBytes.
const (
	_ = uint(DeviceDataMaxBytes - ConsoleMaxBytes)
	_ = uint(DeviceDataMaxBytes - EntropyMaxBytes)
	_ = uint(DeviceDataMaxBytes - NICFrameMaxBytes)
	_ = uint(DeviceDataMaxBytes - BlockMaxBytes)
)
