package vmm

import (
	"fmt"

	"github.com/ftvm/ftvm/internal/limits"
)

// The guest device ABI. These numbers mirror vmm/guests/include/ftvm.h,
// which is the source of truth; devices_test.go parses the header and fails if
// any of them disagree.
const (
	PortConsole uint16 = 0x500
	PortClock   uint16 = 0x501
	PortEntropy uint16 = 0x502
	PortNIC     uint16 = 0x503
	PortBlock   uint16 = 0x504
	PortHalt    uint16 = 0x505
)

// Request ops, per device.
const (
	OpConsoleWrite uint32 = 1
	OpClockNow     uint32 = 1
	OpEntropyRead  uint32 = 1
	OpNICTX        uint32 = 1
	OpNICRX        uint32 = 2
	OpNICWait      uint32 = 3
	OpNICMAC       uint32 = 4
	OpBlockRead    uint32 = 1
	OpBlockWrite   uint32 = 2
	OpBlockSize    uint32 = 3
	OpHaltExit     uint32 = 1
)

// Limits of one request, in bytes. The device limits are set in
// internal/limits, which derives the lockstep wire's bounds from them, so
// that the largest legal request always fits the log.
const (
	ConsoleMaxBytes    = limits.ConsoleMaxBytes
	EntropyMaxBytes    = limits.EntropyMaxBytes
	NICFrameMaxBytes   = limits.NICFrameMaxBytes
	BlockSectorBytes   = 512
	BlockMaxBytes      = limits.BlockMaxBytes
	nicFrameMinBytes   = 14 // an Ethernet header
	nicMACBytes        = 6
	requestAlignBytes  = 8
	requestStructBytes = 40
)

// Status values written to ftvm_req.status. The first three are the
// devices' answers; the others refuse a request the guest got wrong
// (GuestError), which no device sees.
const (
	StatusOK    int32 = 0
	StatusRange int32 = -2  // a block request past the end of the disk
	StatusIO    int32 = -5  // the backend failed; the guest may retry
	StatusFault int32 = -14 // the request's buffer is outside guest memory
	StatusNoDev int32 = -19 // no device at the doorbell the guest rang
	StatusInval int32 = -22 // an unknown op, flags not 0, a length the device does not take
)

// LoadBase is FTVM_LOAD_BASE: where guest programs are linked.
const LoadBase uint64 = 0x400000

// BootMagic is FTVM_BOOT_MAGIC ("FTVMBOOT" read as a little-endian u64).
const BootMagic uint64 = 0x544f4f424d565446

// Offsets inside struct ftvm_req (40 bytes).
const (
	reqOpOff     = 0
	reqStatusOff = 4
	reqAddrOff   = 8
	reqLenOff    = 16
	reqFlagsOff  = 20
	reqArgOff    = 24
	reqResultOff = 32
)

// Offsets inside struct ftvm_boot.
const (
	bootMagicOff     = 0
	bootMemSizeOff   = 8
	bootHeapStartOff = 16
	bootHeapEndOff   = 24
	bootCmdlineOff   = 32
	bootCmdlineBytes = 256
	bootStructBytes  = bootCmdlineOff + bootCmdlineBytes
)

// Device names one guest device.
type Device uint8

// The devices, one per port.
const (
	DeviceConsole Device = iota + 1
	DeviceClock
	DeviceEntropy
	DeviceNIC
	DeviceBlock
	DeviceHalt
)

var deviceNames = [...]string{"", "console", "clock", "entropy", "nic", "block", "halt"}

func (d Device) String() string {
	if int(d) < len(deviceNames) && d != 0 {
		return deviceNames[d]
	}
	return fmt.Sprintf("device(%d)", uint8(d))
}

// Port is the I/O port the guest writes to reach the device.
func (d Device) Port() uint16 {
	return PortConsole + uint16(d) - 1
}

func deviceForPort(port uint16) (Device, bool) {
	if port < PortConsole || port > PortHalt {
		return 0, false
	}
	return Device(port-PortConsole) + DeviceConsole, true
}

// Direction says whether an exit brings something into the guest (an input,
// which a replica must replay) or shows something to the world (an output,
// which may be held until it is safe).
type Direction uint8

// The two directions.
const (
	DirInput Direction = iota + 1
	DirOutput
)

func (d Direction) String() string {
	switch d {
	case DirInput:
		return "input"
	case DirOutput:
		return "output"
	}
	return fmt.Sprintf("direction(%d)", uint8(d))
}

// opSpec describes one (device, op) pair of the device table in ftvm.h.
type opSpec struct {
	name string
	dir  Direction
}

var opTable = map[Device]map[uint32]opSpec{
	DeviceConsole: {OpConsoleWrite: {"WRITE", DirOutput}},
	DeviceClock:   {OpClockNow: {"NOW", DirInput}},
	DeviceEntropy: {OpEntropyRead: {"READ", DirInput}},
	DeviceNIC: {
		OpNICTX:   {"TX", DirOutput},
		OpNICRX:   {"RX", DirInput},
		OpNICWait: {"WAIT", DirInput},
		OpNICMAC:  {"MAC", DirInput},
	},
	DeviceBlock: {
		OpBlockRead:  {"READ", DirInput},
		OpBlockWrite: {"WRITE", DirOutput},
		OpBlockSize:  {"SIZE", DirInput},
	},
	DeviceHalt: {OpHaltExit: {"EXIT", DirOutput}},
}

func lookupOp(d Device, op uint32) (opSpec, bool) {
	s, ok := opTable[d][op]
	return s, ok
}

// OpName names an op of a device, for errors and logs.
func OpName(d Device, op uint32) string {
	if s, ok := lookupOp(d, op); ok {
		return s.name
	}
	return fmt.Sprintf("op(%d)", op)
}

func itoa(v uint64) string { return fmt.Sprint(v) }
