package agent

import (
	"encoding/binary"
	"fmt"

	"github.com/ftvm/ftvm/internal/limits"
	"github.com/ftvm/ftvm/vmm"
)

// The lockstep log knows an input only as (exit index, kind, bytes) and an
// output as (exit index, device, bytes). What the VMM needs to replay an
// input (the status and value the guest saw, and the request it answered)
// travels inside those bytes, laid out here. Little-endian. (vmm/record.go's
// FTVMRLOG file is the other exit format, vmm's own single-host
// record/replay; vmm/doc.go, "Record and replay", says why there are two.)
//
// kind / device (u16): the vmm.Device in the high byte, the op in the low.
//
// input entry data:
//
//	0   4  status given to the guest
//	4   8  result value given to the guest
//	12  8  request arg
//	20  4  request len
//	24     the bytes written at req.addr
//
// output data (digested by the node, so the secondary compares all of it):
//
//	0   8  request arg (the block sector; 0 for the console)
//	8      the output's bytes
const (
	// Set in internal/limits, which adds them to the device limits to
	// size the wire's bounds.
	inputHeaderBytes  = limits.InputHeaderBytes
	outputHeaderBytes = limits.OutputHeaderBytes
	// maxOpForKind is the largest op the one-byte op field of a kind holds.
	maxOpForKind = 0xff
)

var le = binary.LittleEndian

// exitKind packs a device and op into the node's 16-bit kind.
func exitKind(d vmm.Device, op uint32) (uint16, error) {
	if op > maxOpForKind {
		return 0, fmt.Errorf("agent: %s op %d does not fit the log's one-byte op field (max %d)", d, op, maxOpForKind)
	}
	return uint16(d)<<8 | uint16(op), nil
}

// encodeInput lays out an input's result for the log.
func encodeInput(arg uint64, length uint32, r vmm.Result) []byte {
	b := make([]byte, inputHeaderBytes, inputHeaderBytes+len(r.Data))
	le.PutUint32(b[0:], uint32(r.Status))
	le.PutUint64(b[4:], r.Value)
	le.PutUint64(b[12:], arg)
	le.PutUint32(b[20:], length)
	return append(b, r.Data...)
}

// decodeInput turns a logged input back into the guest's result, refusing
// one recorded for another request: the kind matched, so a different
// arg or len means the replica is not where the primary was.
func decodeInput(b []byte, arg uint64, length uint32) (vmm.Result, error) {
	if len(b) < inputHeaderBytes {
		return vmm.Result{}, fmt.Errorf("agent: logged input has %d bytes, fewer than its %d-byte header: the log is corrupt", len(b), inputHeaderBytes)
	}
	if a, l := le.Uint64(b[12:]), le.Uint32(b[20:]); a != arg || l != length {
		return vmm.Result{}, fmt.Errorf("agent: replay diverged: the guest asked with arg %d len %d, the primary's request had arg %d len %d", arg, length, a, l)
	}
	return vmm.Result{Status: int32(le.Uint32(b[0:])), Value: le.Uint64(b[4:]), Data: b[inputHeaderBytes:]}, nil
}

// isDiskWrite is lockstep.Config.Persistent in separate-storage mode: the
// outputs that change the disk each host keeps its own copy of.
func isDiskWrite(kind uint16) bool {
	return kind == uint16(vmm.DeviceBlock)<<8|uint16(vmm.OpBlockWrite)
}

// isClockRead is the input guestClock keeps monotonic.
func isClockRead(kind uint16) bool {
	return kind == uint16(vmm.DeviceClock)<<8|uint16(vmm.OpClockNow)
}

// splitKind undoes exitKind.
func splitKind(kind uint16) (vmm.Device, uint32) {
	return vmm.Device(kind >> 8), uint32(kind & maxOpForKind)
}

// decodeOutput undoes encodeOutput.
func decodeOutput(b []byte) (arg uint64, data []byte, err error) {
	if len(b) < outputHeaderBytes {
		return 0, nil, fmt.Errorf("agent: output of %d bytes is shorter than its %d-byte header", len(b), outputHeaderBytes)
	}
	return le.Uint64(b), b[outputHeaderBytes:], nil
}

// encodeOutput is what the node digests (and a primary with SendOutputData
// ships) for an output.
func encodeOutput(arg uint64, data []byte) []byte {
	b := make([]byte, outputHeaderBytes, outputHeaderBytes+len(data))
	le.PutUint64(b, arg)
	return append(b, data...)
}
