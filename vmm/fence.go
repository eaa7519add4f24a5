package vmm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// ErrFenced is returned by DiskFence.Write when a host with a newer fence
// token has raised the fence: this host is no longer primary and must not
// write the shared disk.
var ErrFenced = errors.New("vmm: the shared disk is fenced by a newer primary")

// DiskFence is the fence record of a disk that both hosts share
// (shared-storage mode): a small file beside the disk holding the highest
// fence token the arbiter has granted to a primary that wrote it or went
// live on it. Every write is made under the record's lock, after checking
// that the writer's token is not lower than the record (raising the
// record to the token when it is higher), so that once a new primary has
// raised the fence (at go-live), no write of the old one can reach the
// disk: one in progress finishes before the raise returns, any later one
// is refused with ErrFenced.
//
// The lock is flock(2) on the record, so the fence holds between
// processes that see the same file through one kernel, or a filesystem
// whose flock is coherent across hosts; storage with its own fencing
// (SCSI persistent reservations, a lease) would replace it.
//
// The record (little-endian; an empty file is fence 0):
//
//	offset size field
//	0      8    magic "FTVMFEN1"
//	8      8    fence token
//	16     4    CRC32C of bytes 0..15
type DiskFence struct {
	f *os.File
}

const (
	fenceMagic       = "FTVMFEN1"
	fenceRecordBytes = 20
)

// OpenDiskFence opens (creating it if missing) the fence record at path.
func OpenDiskFence(path string) (*DiskFence, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("disk fence record: %w", err)
	}
	d := &DiskFence{f: f}
	if err := d.locked(func() error { _, err := d.read(); return err }); err != nil {
		f.Close()
		return nil, err
	}
	return d, nil
}

// Close closes the record.
func (d *DiskFence) Close() error { return d.f.Close() }

// Raise makes fence the lowest token whose writes the disk takes. It fails
// with ErrFenced when the record already holds a higher one.
func (d *DiskFence) Raise(fence uint64) error {
	return d.locked(func() error { return d.admit(fence) })
}

// Write performs write while holding the record's lock, if fence is not
// lower than the record (raising it when fence is higher); else it
// returns ErrFenced without calling write.
func (d *DiskFence) Write(fence uint64, write func() error) error {
	return d.locked(func() error {
		if err := d.admit(fence); err != nil {
			return err
		}
		return write()
	})
}

// Current is the fence the record holds.
func (d *DiskFence) Current() (uint64, error) {
	var v uint64
	err := d.locked(func() (err error) { v, err = d.read(); return err })
	return v, err
}

// admit refuses a fence below the record and raises the record to a
// higher one. The lock is held.
func (d *DiskFence) admit(fence uint64) error {
	cur, err := d.read()
	if err != nil {
		return err
	}
	switch {
	case fence < cur:
		return fmt.Errorf("%w: this host holds fence %d, the record %s holds %d", ErrFenced, fence, d.f.Name(), cur)
	case fence > cur:
		return d.write(fence)
	}
	return nil
}

func (d *DiskFence) locked(fn func() error) error {
	fd := int(d.f.Fd())
	for {
		err := unix.Flock(fd, unix.LOCK_EX)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("locking the disk fence record %s: %w", d.f.Name(), err)
		}
	}
	defer unix.Flock(fd, unix.LOCK_UN)
	return fn()
}

func (d *DiskFence) read() (uint64, error) {
	var b [fenceRecordBytes]byte
	n, err := d.f.ReadAt(b[:], 0)
	if n == 0 && (err == nil || errors.Is(err, io.EOF)) {
		return 0, nil
	}
	if n != fenceRecordBytes || string(b[:8]) != fenceMagic ||
		crc32.Checksum(b[:16], crc32.MakeTable(crc32.Castagnoli)) != binary.LittleEndian.Uint32(b[16:]) {
		return 0, fmt.Errorf("the disk fence record %s is not a fence record (%d bytes, %v): remove it only if no host runs this VM", d.f.Name(), n, err)
	}
	return binary.LittleEndian.Uint64(b[8:]), nil
}

func (d *DiskFence) write(fence uint64) error {
	var b [fenceRecordBytes]byte
	copy(b[:], fenceMagic)
	binary.LittleEndian.PutUint64(b[8:], fence)
	binary.LittleEndian.PutUint32(b[16:], crc32.Checksum(b[:16], crc32.MakeTable(crc32.Castagnoli)))
	if _, err := d.f.WriteAt(b[:], 0); err != nil {
		return fmt.Errorf("raising the disk fence record %s to %d: %w", d.f.Name(), fence, err)
	}
	if err := d.f.Sync(); err != nil {
		return fmt.Errorf("raising the disk fence record %s to %d: fsync: %w", d.f.Name(), fence, err)
	}
	return nil
}
