package arbiter

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"golang.org/x/sys/unix"
)

// File is an Arbiter for hosts that share a file system (a local disk for
// hosts on one machine, or NFSv4 / a cluster file system between machines).
// Each VM has one state file, <dir>/<vmID>.arbiter, holding the newest epoch
// granted and the last fence token. Acquire takes an exclusive open-file-
// description lock (fcntl F_OFD_SETLK) on that file, reads it, and grants
// only an epoch newer than the one stored, writing the new state and
// fsyncing it before the lock is let go. The kernel drops the lock when the
// holder's process dies, so a crashed host never leaves the VM locked.
//
// The state file layout, 32 bytes, little-endian:
//
//	offset size field
//	0      8    magic "FTVMARB1"
//	8      8    epoch: the newest epoch granted
//	16     8    fence: the fence token handed out with it
//	24     4    CRC32C (Castagnoli) of bytes 0..23
//	28     4    zero
//
// The state is rewritten in place (never renamed: the lock belongs to the
// file's inode). A 32-byte write at offset 0 does not straddle a sector, and
// the CRC turns a torn or scribbled file into a refusal rather than a
// second primary.
type File struct {
	dir string
}

var _ Arbiter = (*File)(nil)

// Bounds of the lock wait. Polling instead of a blocking F_OFD_SETLKW lets
// Acquire honour its context.
const (
	fileLockPollMinDelay = 200 * time.Microsecond
	fileLockPollMaxDelay = 20 * time.Millisecond
	fileStateBytes       = 32
	fileStateMagic       = "FTVMARB1"
	fileVMIDMaxBytes     = 64
)

// ErrCorruptState is wrapped by the error Acquire returns for a state file
// whose magic or checksum is wrong.
var ErrCorruptState = errors.New("arbiter state file is corrupt")

var vmIDPattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]*$`)

// NewFile returns an arbiter keeping its state files in dir, which must
// exist and be shared by every host that may act as primary for the VMs.
func NewFile(dir string) (*File, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("arbiter: state directory: %w (create it on storage every host shares)", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("arbiter: %s is not a directory", dir)
	}
	return &File{dir: dir}, nil
}

// Path is the state file of vmID.
func (f *File) Path(vmID string) string { return filepath.Join(f.dir, vmID+".arbiter") }

// Acquire implements Arbiter.
func (f *File) Acquire(ctx context.Context, vmID string, epoch uint64) (granted bool, fence uint64, err error) {
	if epoch == 0 {
		return false, 0, fmt.Errorf("arbiter: epoch 0 is reserved for \"no epoch yet\"; ask for epoch 1 or later")
	}
	if len(vmID) > fileVMIDMaxBytes || !vmIDPattern.MatchString(vmID) {
		return false, 0, fmt.Errorf("arbiter: VM id %q is not usable as a file name: use 1 to %d letters, digits, '.', '_' or '-', not starting with '.' or '-'", vmID, fileVMIDMaxBytes)
	}
	file, err := os.OpenFile(f.Path(vmID), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return false, 0, fmt.Errorf("arbiter: %w", err)
	}
	defer file.Close() // closing the description releases the lock
	if err := lockFile(ctx, file); err != nil {
		return false, 0, err
	}
	stored, fence, err := readFileState(file)
	if err != nil {
		return false, 0, err
	}
	if epoch <= stored {
		return false, 0, nil
	}
	fence++
	if err := writeFileState(file, epoch, fence); err != nil {
		return false, 0, err
	}
	return true, fence, nil
}

// Current reports the newest epoch granted for vmID and its fence, 0 and 0
// when none was. It takes the lock, so it sees a finished Acquire only.
func (f *File) Current(ctx context.Context, vmID string) (epoch, fence uint64, err error) {
	file, err := os.OpenFile(f.Path(vmID), os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("arbiter: %w", err)
	}
	defer file.Close()
	if err := lockFile(ctx, file); err != nil {
		return 0, 0, err
	}
	return readFileState(file)
}

func lockFile(ctx context.Context, file *os.File) error {
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart}
	delay := fileLockPollMinDelay
	for {
		err := unix.FcntlFlock(file.Fd(), unix.F_OFD_SETLK, &lk)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EACCES) {
			return fmt.Errorf("arbiter: lock %s: %w (the file system must support fcntl locks: local, NFSv4 or a cluster file system)", file.Name(), err)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("arbiter: waiting for the lock on %s: %w", file.Name(), ctx.Err())
		case <-t.C:
		}
		delay = min(2*delay, fileLockPollMaxDelay)
	}
}

func readFileState(file *os.File) (epoch, fence uint64, err error) {
	var b [fileStateBytes]byte
	n, err := file.ReadAt(b[:], 0)
	if n == 0 && errors.Is(err, io.EOF) {
		return 0, 0, nil // a new file: nothing granted yet
	}
	if n != fileStateBytes {
		return 0, 0, fmt.Errorf("arbiter: %s: %w: %d bytes, want %d; make sure no primary runs for this VM, then delete the file", file.Name(), ErrCorruptState, n, fileStateBytes)
	}
	if string(b[0:8]) != fileStateMagic {
		return 0, 0, fmt.Errorf("arbiter: %s: %w: bad magic %q; make sure no primary runs for this VM, then delete the file", file.Name(), ErrCorruptState, b[0:8])
	}
	if got, want := binary.LittleEndian.Uint32(b[24:28]), crc32.Checksum(b[0:24], castagnoli); got != want {
		return 0, 0, fmt.Errorf("arbiter: %s: %w: CRC %08x, computed %08x; make sure no primary runs for this VM, then delete the file", file.Name(), ErrCorruptState, got, want)
	}
	return binary.LittleEndian.Uint64(b[8:16]), binary.LittleEndian.Uint64(b[16:24]), nil
}

func writeFileState(file *os.File, epoch, fence uint64) error {
	var b [fileStateBytes]byte
	copy(b[0:8], fileStateMagic)
	binary.LittleEndian.PutUint64(b[8:16], epoch)
	binary.LittleEndian.PutUint64(b[16:24], fence)
	binary.LittleEndian.PutUint32(b[24:28], crc32.Checksum(b[0:24], castagnoli))
	if _, err := file.WriteAt(b[:], 0); err != nil {
		return fmt.Errorf("arbiter: write %s: %w (nothing was granted)", file.Name(), err)
	}
	if err := file.Sync(); err != nil {
		return fmt.Errorf("arbiter: fsync %s: %w (the grant may not be durable; nothing was granted)", file.Name(), err)
	}
	return nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)
