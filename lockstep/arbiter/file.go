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
// granted, the last fence token, the host it was granted to and whether
// that host stopped cleanly (Release). Acquire takes an exclusive open-file-
// description lock (fcntl F_OFD_SETLK) on that file, reads it, and grants
// only an epoch newer than the one stored, writing the new state and
// fsyncing it before the lock is let go. The kernel drops the lock when the
// holder's process dies, so a crashed host never leaves the VM locked.
//
// The state file layout, version 2, 128 bytes, little-endian:
//
//	offset size field
//	0      8    magic "FTVMARB2"
//	8      8    epoch: the newest epoch granted
//	16     8    fence: the fence token handed out with it
//	24     4    flags: bit 0 released (the holder stopped cleanly, or an
//	            operator reset the state: see State.Released)
//	28     4    length of holder, 0..64
//	32     64   holder: the name of the host granted the epoch (File.Holder),
//	            zero padded
//	96     28   zero
//	124    4    CRC32C (Castagnoli) of bytes 0..123
//
// Version 1 files (32 bytes: magic "FTVMARB1", epoch, fence, CRC32C of bytes
// 0..23, zero) are read as not released with no holder, and rewritten as
// version 2 at the next change.
//
// The state is rewritten in place (never renamed: the lock belongs to the
// file's inode). A 128-byte write at offset 0 does not straddle a sector, and
// the CRC turns a torn or scribbled file into a refusal rather than a
// second primary.
//
// Every running daemon of a VM also holds a shared lock on <dir>/<vmID>.running
// for its life (Running): Reset takes an exclusive lock on it, so it
// refuses while any daemon of the VM runs on any host sharing dir. And it
// holds an exclusive lock on <dir>/<vmID>@<host>.running, one daemon per
// host name.
type File struct {
	dir string
	// Holder names this host in the grants it gets (64 bytes at most),
	// so that a host starting as primary can tell whether it was the
	// last one (the daemon's rule, firstEpoch in cmd/ftvm, reads this
	// with the disk's side file). Set it before the first Acquire.
	Holder string
}

// State is what the state file of a VM says.
type State struct {
	Epoch, Fence uint64
	// Holder is the host the epoch was granted to ("" before version 2, or
	// after Reset).
	Holder string
	// Released says the holder stopped cleanly (Release) or an operator
	// reset the state: no host acts as primary in Epoch any more.
	Released bool
}

// MayTakeNext is the rule on the record alone (no disk to consult):
// whether host may ask for the next epoch on its own when it starts as
// primary: nothing was ever granted, or the epoch was
// released by host itself or by an operator's reset (holder cleared). A
// state that is not released may belong to a running primary; one
// released by another host says that host's disk is the newest.
func (s State) MayTakeNext(host string) bool {
	return s.Epoch == 0 || s.Released && (s.Holder == "" || s.Holder == host)
}

var _ Arbiter = (*File)(nil)

// Bounds of the lock wait. Polling instead of a blocking F_OFD_SETLKW lets
// Acquire honour its context.
const (
	fileLockPollMinDelay = 200 * time.Microsecond
	fileLockPollMaxDelay = 20 * time.Millisecond
	fileStateBytes       = 128
	fileStateMagic       = "FTVMARB2"
	fileStateV1Bytes     = 32
	fileStateV1Magic     = "FTVMARB1"
	fileVMIDMaxBytes     = 64
	fileHolderMaxBytes   = 64
	fileFlagReleased     = 1
)

// ErrRunning is wrapped by the error Reset returns while a daemon of the
// VM runs.
var ErrRunning = errors.New("a daemon of this VM is running")

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
	if len(f.Holder) > fileHolderMaxBytes {
		return false, 0, fmt.Errorf("arbiter: holder name %q is longer than %d bytes", f.Holder, fileHolderMaxBytes)
	}
	file, err := os.OpenFile(f.Path(vmID), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return false, 0, fmt.Errorf("arbiter: %w", err)
	}
	defer file.Close() // closing the description releases the lock
	if err := lockFile(ctx, file); err != nil {
		return false, 0, err
	}
	st, err := readFileState(file)
	if err != nil {
		return false, 0, err
	}
	if epoch <= st.Epoch {
		return false, 0, nil
	}
	next := State{Epoch: epoch, Fence: st.Fence + 1, Holder: f.Holder}
	if err := writeFileState(file, next); err != nil {
		return false, 0, err
	}
	return true, next.Fence, nil
}

// Release records that this host, primary in epoch with fence, stopped
// cleanly: it serves no more, and it may take the next epoch by itself
// when it starts again. It changes nothing, and says
// so with a nil error and false, when the state moved on (another host
// took a newer epoch) or names another holder.
func (f *File) Release(ctx context.Context, vmID string, epoch, fence uint64) (bool, error) {
	return f.update(ctx, vmID, func(st *State) bool {
		if st.Epoch != epoch || st.Fence != fence || st.Holder != f.Holder || st.Released {
			return false
		}
		st.Released = true
		return true
	})
}

// Reset marks the newest epoch released and clears its holder, so that
// any host may take the next epoch by itself (epochs and fences go on
// growing: a reset never hands out an old fence again). It refuses,
// wrapping ErrRunning, while any daemon of the VM runs on a host sharing
// the directory (one that holds Running's lock). It returns the state as
// it was.
func (f *File) Reset(ctx context.Context, vmID string) (State, error) {
	return f.releaseTo(ctx, vmID, "")
}

// Adopt is Reset that names host as the holder of the released epoch, so
// that host, and only it, may take the next epoch by itself: for an
// operator who knows host's disk is the newest one left (ftvm recover).
func (f *File) Adopt(ctx context.Context, vmID, host string) (State, error) {
	if len(host) > fileHolderMaxBytes {
		return State{}, fmt.Errorf("arbiter: holder name %q is longer than %d bytes", host, fileHolderMaxBytes)
	}
	return f.releaseTo(ctx, vmID, host)
}

func (f *File) releaseTo(ctx context.Context, vmID, holder string) (State, error) {
	run, err := os.OpenFile(f.runningPath(vmID), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return State{}, fmt.Errorf("arbiter: %w", err)
	}
	defer run.Close()
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart}
	if err := unix.FcntlFlock(run.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
			return State{}, fmt.Errorf("arbiter: %w (it holds a lock on %s): stop every ftvm daemon of VM %s first, on every host", ErrRunning, run.Name(), vmID)
		}
		return State{}, fmt.Errorf("arbiter: lock %s: %w", run.Name(), err)
	}
	var old State
	_, err = f.update(ctx, vmID, func(st *State) bool {
		old = *st
		if st.Epoch == 0 || st.Released && st.Holder == holder {
			return false
		}
		st.Released, st.Holder = true, holder
		return true
	})
	return old, err
}

// Running marks this process as a running daemon of vmID until the
// returned closer is closed (a shared lock on <dir>/<vmID>.running, which
// the kernel drops if the process dies): Reset refuses meanwhile. With a
// Holder set it also takes an exclusive lock on <dir>/<vmID>@<Holder>.running,
// so that no two daemons of the VM run under one host name: while it
// holds an epoch that no other host may take, a host that finds the record
// naming it knows no daemon of its own still acts on it.
func (f *File) Running(vmID string) (io.Closer, error) {
	if len(vmID) > fileVMIDMaxBytes || !vmIDPattern.MatchString(vmID) {
		return nil, fmt.Errorf("arbiter: VM id %q is not usable as a file name", vmID)
	}
	run, err := lockRunning(f.runningPath(vmID), unix.F_RDLCK)
	if err != nil {
		return nil, err
	}
	if f.Holder == "" {
		return run, nil
	}
	if len(f.Holder) > fileHolderMaxBytes || !vmIDPattern.MatchString(f.Holder) {
		run.Close()
		return nil, fmt.Errorf("arbiter: host name %q is not usable as a file name: use 1 to %d letters, digits, '.', '_' or '-', not starting with '.' or '-'", f.Holder, fileHolderMaxBytes)
	}
	host, err := lockRunning(filepath.Join(f.dir, vmID+"@"+f.Holder+".running"), unix.F_WRLCK)
	if err != nil {
		run.Close()
		return nil, fmt.Errorf("%w: another daemon of VM %s runs as host %q: stop it, or give this one its own host name", err, vmID, f.Holder)
	}
	return closers{host, run}, nil
}

type closers []io.Closer

func (cs closers) Close() error {
	var first error
	for _, c := range cs {
		if err := c.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// lockRunning opens path and takes an OFD lock of type typ on it, without
// waiting.
func lockRunning(path string, typ int16) (*os.File, error) {
	run, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("arbiter: %w", err)
	}
	lk := unix.Flock_t{Type: typ, Whence: io.SeekStart}
	if err := unix.FcntlFlock(run.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
		run.Close()
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
			return nil, fmt.Errorf("arbiter: %s is locked (by ftvm arbiter reset, or by another daemon)", path)
		}
		return nil, fmt.Errorf("arbiter: lock %s: %w (the file system must support fcntl locks)", path, err)
	}
	return run, nil
}

// DaemonRunning reports whether a daemon of vmID holds Running's lock (on
// any host sharing the directory).
func (f *File) DaemonRunning(vmID string) (bool, error) {
	run, err := os.OpenFile(f.runningPath(vmID), os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("arbiter: %w", err)
	}
	defer run.Close() // drops the probe's lock
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart}
	err = unix.FcntlFlock(run.Fd(), unix.F_OFD_SETLK, &lk)
	if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
		return true, nil
	}
	return false, err
}

func (f *File) runningPath(vmID string) string { return filepath.Join(f.dir, vmID+".running") }

// State reads the state of vmID under the lock (the zero State when
// nothing was ever granted).
func (f *File) State(ctx context.Context, vmID string) (State, error) {
	file, err := os.OpenFile(f.Path(vmID), os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return State{}, nil
	}
	if err != nil {
		return State{}, fmt.Errorf("arbiter: %w", err)
	}
	defer file.Close()
	if err := lockFile(ctx, file); err != nil {
		return State{}, err
	}
	return readFileState(file)
}

// update changes the state of vmID under the lock: change edits it and
// says whether to write it back.
func (f *File) update(ctx context.Context, vmID string, change func(*State) bool) (bool, error) {
	file, err := os.OpenFile(f.Path(vmID), os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("arbiter: %w", err)
	}
	defer file.Close()
	if err := lockFile(ctx, file); err != nil {
		return false, err
	}
	st, err := readFileState(file)
	if err != nil {
		return false, err
	}
	if !change(&st) {
		return false, nil
	}
	return true, writeFileState(file, st)
}

// Current reports the newest epoch granted for vmID and its fence, 0 and 0
// when none was. It takes the lock, so it sees a finished Acquire only.
func (f *File) Current(ctx context.Context, vmID string) (epoch, fence uint64, err error) {
	st, err := f.State(ctx, vmID)
	return st.Epoch, st.Fence, err
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

func readFileState(file *os.File) (State, error) {
	var b [fileStateBytes]byte
	n, err := file.ReadAt(b[:], 0)
	if n == 0 && errors.Is(err, io.EOF) {
		return State{}, nil // a new file: nothing granted yet
	}
	corrupt := func(format string, a ...any) (State, error) {
		return State{}, fmt.Errorf("arbiter: %s: %w: %s; make sure no daemon runs for this VM, then delete the file", file.Name(), ErrCorruptState, fmt.Sprintf(format, a...))
	}
	want := fileStateBytes
	if n >= 8 && string(b[0:8]) == fileStateV1Magic {
		want = fileStateV1Bytes
	}
	if n != want {
		return corrupt("%d bytes, want %d", n, want)
	}
	crcAt := want - 4
	if want == fileStateV1Bytes {
		crcAt = 24
	}
	if m := string(b[0:8]); m != fileStateMagic && m != fileStateV1Magic {
		return corrupt("bad magic %q", b[0:8])
	}
	if got, sum := binary.LittleEndian.Uint32(b[crcAt:]), crc32.Checksum(b[0:crcAt], castagnoli); got != sum {
		return corrupt("CRC %08x, computed %08x", got, sum)
	}
	st := State{Epoch: binary.LittleEndian.Uint64(b[8:16]), Fence: binary.LittleEndian.Uint64(b[16:24])}
	if want == fileStateV1Bytes {
		return st, nil
	}
	st.Released = binary.LittleEndian.Uint32(b[24:28])&fileFlagReleased != 0
	hl := binary.LittleEndian.Uint32(b[28:32])
	if hl > fileHolderMaxBytes {
		return corrupt("holder length %d", hl)
	}
	st.Holder = string(b[32 : 32+hl])
	return st, nil
}

func writeFileState(file *os.File, st State) error {
	var b [fileStateBytes]byte
	copy(b[0:8], fileStateMagic)
	binary.LittleEndian.PutUint64(b[8:16], st.Epoch)
	binary.LittleEndian.PutUint64(b[16:24], st.Fence)
	if st.Released {
		binary.LittleEndian.PutUint32(b[24:28], fileFlagReleased)
	}
	binary.LittleEndian.PutUint32(b[28:32], uint32(len(st.Holder)))
	copy(b[32:32+fileHolderMaxBytes], st.Holder)
	binary.LittleEndian.PutUint32(b[124:128], crc32.Checksum(b[0:124], castagnoli))
	if _, err := file.WriteAt(b[:], 0); err != nil {
		return fmt.Errorf("arbiter: write %s: %w (nothing was granted)", file.Name(), err)
	}
	if err := file.Sync(); err != nil {
		return fmt.Errorf("arbiter: fsync %s: %w (the grant may not be durable; nothing was granted)", file.Name(), err)
	}
	return nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)
