package vmm

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// A secondary's disk needs no per-write durability (a secondary that dies
// rejoins with a checkpoint, which rewrites its disk where it differs), so
// its owner may write a run of held block writes without fdatasync, make
// them durable with one SyncDisk, and only then mark each one durable.
// Until then each stays held, as a held write whose Release failed does:
// visible to the guest's reads, and written again (and made durable) by a
// later Release if the sync fails. A primary's writes keep Release, which
// makes each durable before it returns.

var errNotBlockWrite = errors.New("not a held block write")

// WriteUnsynced writes a held block write to the disk file without making
// it durable. The write stays held until MarkDurable: call SyncDisk (of
// this or any write on the same disk) after WriteUnsynced succeeded, then
// MarkDurable. If either fails, Release performs it afresh, durably.
// Nothing is done for an output already released or dropped.
func (o *Output) WriteUnsynced() error {
	b, ok := o.dev.(*blockDevice)
	if !ok || o.Device != DeviceBlock || o.Op != OpBlockWrite {
		return fmt.Errorf("%s output op %d: %w", o.Device, o.Op, errNotBlockWrite)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.done {
		return nil
	}
	return b.writeUnsynced(o.Arg, o.Data)
}

// SyncDisk makes every write to the disk of this held block write durable
// (fdatasync), those WriteUnsynced made included.
func (o *Output) SyncDisk() error {
	b, ok := o.dev.(*blockDevice)
	if !ok || o.Device != DeviceBlock {
		return fmt.Errorf("%s output: %w", o.Device, errNotBlockWrite)
	}
	return b.sync()
}

// MarkDurable ends a held block write that WriteUnsynced wrote and a
// SyncDisk after it made durable: it is done, as after a Release, and no
// longer held. Calling it for a write that was not synced loses the write
// on a crash.
func (o *Output) MarkDurable() { o.end() }

// DeliverUnsynced is Deliver for a block write, without fdatasync: the
// write is in the disk file when it returns, durable only after a later
// SyncDisk. Every other output is refused (Deliver them).
func (m *Machine) DeliverUnsynced(d Device, op uint32, arg uint64, data []byte) error {
	if d != DeviceBlock || op != OpBlockWrite {
		return fmt.Errorf("deliver unsynced: %s op %d: %w", d, op, errNotBlockWrite)
	}
	if uint64(len(data)) > BlockMaxBytes {
		return fmt.Errorf("deliver unsynced block write: %d bytes, more than %d", len(data), BlockMaxBytes)
	}
	if err := checkLen(d, op, uint32(len(data))); err != nil {
		return fmt.Errorf("deliver unsynced block write: %v", err)
	}
	if !m.block.inRange(arg, uint32(len(data))) {
		return fmt.Errorf("deliver unsynced block write of %d bytes at sector %d runs past the end of the %d-sector disk: %w", len(data), arg, m.block.sectors, ErrRefused)
	}
	return m.block.writeUnsynced(arg, data)
}

// SyncDisk makes every write to the VM's disk durable (fdatasync).
func (m *Machine) SyncDisk() error { return m.block.sync() }

// writeUnsynced is deliver without the fdatasync.
func (b *blockDevice) writeUnsynced(sector uint64, data []byte) error {
	if b.f == nil || !b.inRange(sector, uint32(len(data))) {
		return errBlockRange
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	// Marked before the write, as deliver does: a write that fails half
	// way may still have changed the file.
	markChunks(b.written, sector*BlockSectorBytes, uint64(len(data)))
	if _, err := b.f.WriteAt(data, int64(sector*BlockSectorBytes)); err != nil {
		return fmt.Errorf("block write at sector %d: %w", sector, err)
	}
	return nil
}

// sync makes the disk file's writes durable. Without mu, like deliver's
// fdatasync: reads and snapshots need not wait for the device.
func (b *blockDevice) sync() error {
	if b.f == nil {
		return nil
	}
	if err := unix.Fdatasync(int(b.f.Fd())); err != nil {
		return fmt.Errorf("block fdatasync: %w", err)
	}
	return nil
}
