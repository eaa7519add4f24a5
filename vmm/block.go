package vmm

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"sync"

	"golang.org/x/sys/unix"
)

var errBlockRange = errors.New("block request past the end of the device")

// blockDevice is a disk backed by a file: 512-byte sectors, as many as fit
// in the file when the VM is created. Writes are made durable (fdatasync)
// before the request returns or, for a held write, before Release returns.
// Held writes stay visible to later reads (read-your-writes) until they are
// released or dropped.
//
// The disk's contents travel in snapshots (saveDisk, saveDiskLive while
// the guest runs, restoreDisk) in chunks of DiskChunkBytes: every
// non-zero chunk for a full snapshot, the chunks written since the last
// snapshot for an increment. A VM whose disk is shared with its replica
// (Config.DiskSharedStorage) saves none.
type blockDevice struct {
	f       *os.File // nil: a VM without a disk (SIZE answers 0)
	sectors uint64
	shared  bool // Config.DiskSharedStorage: snapshots omit the contents

	// mu guards pending, written and the file against releasers, which
	// may run on any goroutine, also while a snapshot reads the disk.
	mu      sync.Mutex
	pending []*Output // held writes, oldest first
	// written has one bit per chunk written to the file (deliver) since
	// the last snapshot taken (a live one: since it began) or restored:
	// what the next increment holds.
	written []uint64
	// restoredChunks counts the chunks restores wrote (under mu): what
	// a Full restore found different, for the tests.
	restoredChunks uint64
	// restoreSyncs counts the fdatasyncs restores made (under mu), for
	// the tests.
	restoreSyncs uint64
}

func newBlock(f *os.File, shared bool) (*blockDevice, error) {
	b := &blockDevice{f: f, shared: shared}
	if f == nil {
		return b, nil
	}
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("block device: %w", err)
	}
	b.sectors = uint64(st.Size()) / BlockSectorBytes
	b.written = make([]uint64, (diskChunks(b.size())+63)/64)
	return b, nil
}

// size is the disk's size in bytes: whole sectors only, so that bytes of
// the file past the last whole sector are never the guest's.
func (b *blockDevice) size() uint64 { return b.sectors * BlockSectorBytes }

func (b *blockDevice) inRange(sector uint64, n uint32) bool {
	count := uint64(n) / BlockSectorBytes
	return sector <= b.sectors && count <= b.sectors-sector
}

func (b *blockDevice) input(e *Exit) (Result, error) {
	if e.Op == OpBlockSize {
		return Result{Value: b.sectors}, nil
	}
	if !b.inRange(e.Arg, e.Len) {
		return Result{Status: StatusRange}, nil
	}
	buf := make([]byte, e.Len)
	off := int64(e.Arg * BlockSectorBytes)
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, err := b.f.ReadAt(buf, off); err != nil {
		return Result{Status: StatusIO}, nil
	}
	for _, o := range b.pending {
		overlay(buf, off, o.Data, int64(o.Arg*BlockSectorBytes))
	}
	return Result{Data: buf}, nil
}

// overlay copies the part of src (at byte offset srcOff) that overlaps dst
// (at dstOff) into dst.
func overlay(dst []byte, dstOff int64, src []byte, srcOff int64) {
	lo := max(dstOff, srcOff)
	hi := min(dstOff+int64(len(dst)), srcOff+int64(len(src)))
	if lo < hi {
		copy(dst[lo-dstOff:hi-dstOff], src[lo-srcOff:hi-srcOff])
	}
}

func (b *blockDevice) check(e *Exit) int32 {
	if !b.inRange(e.Arg, e.Len) {
		return StatusRange
	}
	return StatusOK
}

func (b *blockDevice) deliver(_ uint32, sector uint64, data []byte) error {
	if !b.inRange(sector, uint32(len(data))) {
		return errBlockRange
	}
	b.mu.Lock()
	// Marked before the write: a write that fails half way may still
	// have changed the file.
	markChunks(b.written, sector*BlockSectorBytes, uint64(len(data)))
	_, err := b.f.WriteAt(data, int64(sector*BlockSectorBytes))
	b.mu.Unlock()
	if err != nil {
		return fmt.Errorf("block write at sector %d: %w", sector, err)
	}
	// Without mu: the bytes are in the file, which is all a read or a
	// snapshot wants, and neither should wait for the device (beside
	// other I/O an fdatasync took up to a second). A held write stays
	// held until it returns, and is written again if it fails.
	if err := unix.Fdatasync(int(b.f.Fd())); err != nil {
		return fmt.Errorf("block fdatasync: %w", err)
	}
	return nil
}

func (b *blockDevice) hold(o *Output) {
	b.mu.Lock()
	b.pending = append(b.pending, o)
	b.mu.Unlock()
}

func (b *blockDevice) unhold(o *Output) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, p := range b.pending {
		if p == o {
			b.pending = append(b.pending[:i], b.pending[i+1:]...)
			return
		}
	}
}

// markChunks sets the bits of the chunks that bytes [off, off+n) touch.
func markChunks(bitmap []uint64, off, n uint64) {
	if n == 0 {
		return
	}
	for c := off / DiskChunkBytes; c <= (off+n-1)/DiskChunkBytes; c++ {
		bitmap[c/64] |= 1 << (c % 64)
	}
}

const blockStateVersion = 1

// saveState records the disk's size; the contents travel in the
// snapshot's disk section (saveDisk).
func (b *blockDevice) saveState() ([]byte, error) {
	var body [8]byte
	le.PutUint64(body[:], b.sectors)
	return stateWithVersion(blockStateVersion, body[:]), nil
}

func (b *blockDevice) restoreState(s []byte) error {
	body, err := stateBody("block", s, blockStateVersion, 8)
	if err != nil {
		return err
	}
	if n := le.Uint64(body); n != b.sectors {
		return fmt.Errorf("the snapshot's block device has %d sectors, this VM's has %d: attach the same disk image", n, b.sectors)
	}
	return nil
}

// saveDisk fills the disk section of s: for a Full snapshot every chunk
// of the file that holds a non-zero byte, for an Incremental one every
// chunk written since the last snapshot (zero or not: it may have been
// zeroed). It reads the file, the durable content, and never the held
// writes, which are outputs the caller carries apart.
//
// The held writes in released (Machine.SnapshotReleased) are saved as if
// performed: over the chunks read, in order.
//
// The read and the clearing of the written bitmap happen under mu, so a
// release on another goroutine lands either in this snapshot's content or
// in the next increment, never in neither. On an error nothing is
// cleared.
func (b *blockDevice) saveDisk(kind SnapshotKind, s *Snapshot, released []*Output) error {
	s.DiskBytes, s.DiskOmitted = b.size(), b.shared
	if b.f == nil || b.shared {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	var chunks []uint64
	var data []byte
	add := func(c uint64, chunk []byte) error {
		chunks = append(chunks, c)
		data = append(data, chunk...)
		return nil
	}
	if kind == Full {
		if err := forEachNonZeroChunk(b.f, b.size(), nil, add); err != nil {
			return err
		}
	} else {
		buf := make([]byte, DiskChunkBytes)
		for _, c := range dirtyPages(b.written, diskChunks(b.size())) {
			chunk := buf[:diskChunkLen(b.size(), c)]
			if _, err := b.f.ReadAt(chunk, int64(c*DiskChunkBytes)); err != nil {
				return fmt.Errorf("snapshot of the disk: reading chunk %d (bytes %d-%d of %s): %w", c, c*DiskChunkBytes, c*DiskChunkBytes+uint64(len(chunk)), b.f.Name(), err)
			}
			add(c, chunk)
		}
	}
	chunks, data, err := b.overReleased(chunks, data, released)
	if err != nil {
		return err
	}
	clear(b.written)
	s.DiskChunks, s.DiskData = chunks, data
	return nil
}

// overReleased returns chunks (increasing) and their data with the writes
// of released that are still held applied over them, in order; a chunk
// they touch that is not among chunks is read from the file first. A
// write released and performed meanwhile is in the file already (and
// left, performed, in the pending list until its Release returns: applied
// again, it writes the same bytes in the same order). mu held.
func (b *blockDevice) overReleased(chunks []uint64, data []byte, released []*Output) ([]uint64, []byte, error) {
	var writes []*Output
	for _, o := range released {
		if slices.Contains(b.pending, o) {
			writes = append(writes, o)
		}
	}
	if len(writes) == 0 {
		return chunks, data, nil
	}
	size := b.size()
	// Every chunk, with its bytes, as a map for the writes to land in.
	have := map[uint64][]byte{}
	off := uint64(0)
	for _, c := range chunks {
		n := diskChunkLen(size, c)
		have[c] = data[off : off+n]
		off += n
	}
	for _, o := range writes {
		lo := o.Arg * BlockSectorBytes
		if len(o.Data) == 0 || lo+uint64(len(o.Data)) > size {
			continue // refused at the exit; Release never writes it
		}
		for c := lo / DiskChunkBytes; c <= (lo+uint64(len(o.Data))-1)/DiskChunkBytes; c++ {
			chunk, ok := have[c]
			if !ok {
				chunk = make([]byte, diskChunkLen(size, c))
				if _, err := b.f.ReadAt(chunk, int64(c*DiskChunkBytes)); err != nil {
					return nil, nil, fmt.Errorf("snapshot of the disk: reading chunk %d of %s for a released write: %w", c, b.f.Name(), err)
				}
				have[c] = chunk
			}
			overlay(chunk, int64(c*DiskChunkBytes), o.Data, int64(lo))
		}
	}
	chunks = slices.Sorted(maps.Keys(have))
	out := make([]byte, 0, diskDataBytes(size, chunks))
	for _, c := range chunks {
		out = append(out, have[c]...)
	}
	return chunks, out, nil
}

// takeWritten returns the chunks written since the last snapshot and
// forgets them, so that every write from now on is in the next one: a
// live snapshot takes them at the start of its copy. A VM without a disk
// of its own has none.
func (b *blockDevice) takeWritten() []uint64 {
	if b.f == nil || b.shared {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	chunks := dirtyPages(b.written, diskChunks(b.size()))
	clear(b.written)
	return chunks
}

// saveDiskLive fills the disk section of s while the guest may be writing
// the disk: for a Full snapshot every non-zero chunk of the file, for an
// Incremental one the chunks written (as takeWritten, called at the start
// of the snapshot, returned them). It holds mu per batch of chunks,
// never for the whole disk, so a guest's write waits for one batch's read
// at most. A write that lands after takeWritten may be in the copy or
// not, or in part: it is in the next snapshot either way. Held writes are
// not read, as in saveDisk.
func (b *blockDevice) saveDiskLive(kind SnapshotKind, written []uint64, s *Snapshot) error {
	s.DiskBytes, s.DiskOmitted = b.size(), b.shared
	if b.f == nil || b.shared {
		return nil
	}
	add := func(c uint64, chunk []byte) error {
		s.DiskChunks = append(s.DiskChunks, c)
		s.DiskData = append(s.DiskData, chunk...)
		return nil
	}
	if kind == Full {
		return forEachNonZeroChunk(b.f, b.size(), &b.mu, add)
	}
	buf := make([]byte, DiskChunkBytes)
	for len(written) > 0 {
		batch := written[:min(len(written), diskCopyBatchChunks)]
		written = written[len(batch):]
		b.mu.Lock()
		for _, c := range batch {
			chunk := buf[:diskChunkLen(b.size(), c)]
			if _, err := b.f.ReadAt(chunk, int64(c*DiskChunkBytes)); err != nil {
				b.mu.Unlock()
				return fmt.Errorf("live snapshot of the disk: reading chunk %d (bytes %d-%d of %s): %w", c, c*DiskChunkBytes, c*DiskChunkBytes+uint64(len(chunk)), b.f.Name(), err)
			}
			add(c, chunk)
		}
		b.mu.Unlock()
	}
	return nil
}

// diskCopyBatchChunks is how many chunks a snapshot reads per hold of the
// device's lock: 64 KiB. A guest's write waits for one batch at most; a
// lock per chunk would make a live copy of a disk the guest writes all
// the time take a write's fdatasync per chunk, as each write holds the
// lock through its fdatasync.
const diskCopyBatchChunks = 16

// checkRestoreDisk says whether the disk section of s can be restored on
// this disk, before the restore changes anything.
func (b *blockDevice) checkRestoreDisk(s *Snapshot) error {
	if err := s.checkDisk(); err != nil {
		return err
	}
	if s.DiskBytes != b.size() {
		return fmt.Errorf("the snapshot's disk is %d bytes (%d sectors), this VM's disk is %d bytes: give the VM a disk file of the snapshot's size", s.DiskBytes, s.DiskBytes/BlockSectorBytes, b.size())
	}
	if b.size() == 0 {
		return nil
	}
	switch {
	case s.DiskOmitted && !b.shared:
		return fmt.Errorf("the snapshot was taken with DiskSharedStorage and holds no disk contents, but this VM has a disk of its own: configure both VMs alike")
	case !s.DiskOmitted && b.shared:
		return fmt.Errorf("the snapshot holds disk contents, but this VM's disk is shared with the snapshot's VM (DiskSharedStorage) and must not be rewritten: configure both VMs alike")
	}
	return nil
}

// restoreDisk writes the disk section of s (checked by checkRestoreDisk)
// into the file and makes it durable. After a Full snapshot the disk holds
// exactly the snapshot's chunks and zeros elsewhere, so that nothing of
// what the file held before survives; an increment writes its chunks over
// the disk at its base. The restored disk is the base of the next
// increment.
//
// A Full restore writes only what differs: a joining secondary's disk
// usually holds this VM's disk of a little while ago (it served or
// followed it before), and rewriting all of it, then waiting for all of
// it to reach the device, made the pause that ends a re-protection grow
// with the disk's contents. So the file's non-zero chunks are read and
// compared first; the chunks that differ are written, in runs, and the
// ones the snapshot does not have are zeroed, so the fdatasync waits for
// the difference only.
func (b *blockDevice) restoreDisk(s *Snapshot) error {
	if b.f == nil || b.shared {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	write := make([]bool, len(s.DiskChunks)) // chunk i must be written
	changed := false                         // the file was changed: sync it
	if s.Kind == Full && !restoreRewritesAll {
		var err error
		if changed, err = b.diffFull(s, write); err != nil {
			return err
		}
	} else {
		if s.Kind == Full {
			if err := zeroDisk(b.f, b.size()); err != nil {
				return err
			}
			changed = true
		}
		for i := range write {
			write[i] = true
		}
	}
	n, err := b.writeChunkRuns(s, write)
	if err != nil {
		return err
	}
	// A restore that changed nothing leaves the file as durable as it
	// was (each block write is made durable by deliver): an fdatasync
	// would still flush the device's cache, which on ext4 over virtio
	// took milliseconds of a resync's pause.
	if (changed || n > 0 || restoreSyncsAlways) && !restoreSkipsSync {
		if err := unix.Fdatasync(int(b.f.Fd())); err != nil {
			return fmt.Errorf("restoring the disk: fdatasync %s: %w", b.f.Name(), err)
		}
		b.restoreSyncs++
	}
	clear(b.written)
	return nil
}

// restoreSyncsAlways makes every restore fdatasync the disk, as before
// restores that change nothing skipped it: for the benchmarks that
// compare the two.
var restoreSyncsAlways = false

// restoreSkipsSync is a planted bug for the tests, which must catch it:
// a restore that writes chunks does not fdatasync them.
var restoreSkipsSync = false

// restoreRewritesAll makes a Full restore zero the whole disk and write
// every chunk again, as it did before restores wrote only the difference:
// for the tests that compare the two.
var restoreRewritesAll = false

// diffFull compares the file with the Full snapshot s: it sets write[i]
// for each chunk of s the file does not already hold, and zeroes the
// file's non-zero chunks s does not have, saying whether it zeroed any.
// The caller holds mu.
func (b *blockDevice) diffFull(s *Snapshot, write []bool) (zeroed bool, err error) {
	for i := range write {
		write[i] = true
	}
	var stale []uint64 // non-zero on the file, absent from s
	i := 0
	err = forEachNonZeroChunk(b.f, b.size(), nil, func(c uint64, chunk []byte) error {
		for i < len(s.DiskChunks) && s.DiskChunks[i] < c {
			i++
		}
		if i < len(s.DiskChunks) && s.DiskChunks[i] == c {
			if _, want := s.DiskChunk(i); bytes.Equal(chunk, want) {
				write[i] = false
			}
			return nil
		}
		stale = append(stale, c)
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("restoring the disk: reading what %s holds: %w", b.f.Name(), err)
	}
	zeroed = len(stale) > 0
	for len(stale) > 0 {
		k := 1
		for k < len(stale) && stale[k] == stale[k-1]+1 {
			k++
		}
		lo := stale[0] * DiskChunkBytes
		hi := min((stale[k-1]+1)*DiskChunkBytes, b.size())
		if err := zeroRange(b.f, lo, hi); err != nil {
			return true, err
		}
		stale = stale[k:]
	}
	return zeroed, nil
}

// writeChunkRuns writes the chunks of s marked in write, one WriteAt per
// run of chunks that are consecutive on the disk (their data is
// consecutive in DiskData too), and returns how many it wrote.
func (b *blockDevice) writeChunkRuns(s *Snapshot, write []bool) (written int, err error) {
	for i := 0; i < len(s.DiskChunks); {
		if !write[i] {
			i++
			continue
		}
		j := i + 1
		for j < len(s.DiskChunks) && write[j] && s.DiskChunks[j] == s.DiskChunks[j-1]+1 {
			j++
		}
		first, _ := s.DiskChunk(i)
		last, lastData := s.DiskChunk(j - 1)
		off := uint64(i) * DiskChunkBytes
		data := s.DiskData[off : uint64(j-1)*DiskChunkBytes+uint64(len(lastData))]
		if _, err := b.f.WriteAt(data, int64(first*DiskChunkBytes)); err != nil {
			return written + 1, fmt.Errorf("restoring disk chunks %d-%d into %s: %w", first, last, b.f.Name(), err)
		}
		b.restoredChunks += uint64(j - i)
		written += j - i
		i = j
	}
	return written, nil
}

// zeroRange makes bytes [lo, hi) of f read as zeros: a hole punched, or
// zeros written where the filesystem cannot punch.
func zeroRange(f *os.File, lo, hi uint64) error {
	err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, int64(lo), int64(hi-lo))
	if err == nil {
		// Allocated again, as zeroDisk does: the disk stays backed, so
		// that the guest's later writes there cannot fail for space.
		if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_KEEP_SIZE, int64(lo), int64(hi-lo)); err != nil &&
			!errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) {
			return fmt.Errorf("reallocating bytes %d-%d of the disk %s after zeroing them: fallocate: %w: free space on its filesystem", lo, hi, f.Name(), err)
		}
		return nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("zeroing bytes %d-%d of the disk %s: fallocate(PUNCH_HOLE): %w", lo, hi, f.Name(), err)
	}
	for off := lo; off < hi; off += DiskChunkBytes {
		n := min(DiskChunkBytes, hi-off)
		if _, err := f.WriteAt(zeroChunk[:n], int64(off)); err != nil {
			return fmt.Errorf("zeroing bytes %d-%d of the disk %s: %w", off, off+n, f.Name(), err)
		}
	}
	return nil
}

var zeroChunk = make([]byte, DiskChunkBytes)

// forEachNonZeroChunk calls fn for every chunk of the first size bytes of
// f that holds a non-zero byte, in order; chunk aliases a buffer reused
// for the next call. It reads only the file's data regions (lseek
// SEEK_DATA / SEEK_HOLE), so that a sparse image, the usual kind, costs
// what it holds rather than its size. It moves f's file offset, which
// the block device never uses (it reads and writes at offsets).
//
// With mu nil the caller holds the device's lock (or needs none); a live
// snapshot passes the lock, which is then held around each read of a
// batch of chunks: a write it lets through between two reads, or into a
// region already skipped as a hole, is in the next snapshot's written
// chunks.
func forEachNonZeroChunk(f *os.File, size uint64, mu *sync.Mutex, fn func(c uint64, chunk []byte) error) error {
	fd := int(f.Fd())
	n := diskChunks(size)
	buf := make([]byte, diskCopyBatchChunks*DiskChunkBytes)
	for c := uint64(0); c < n; {
		end := n // chunks [c, end) may hold data
		if data, err := unix.Seek(fd, int64(c*DiskChunkBytes), unix.SEEK_DATA); errors.Is(err, unix.ENXIO) {
			return nil // no data from here to the end of the file
		} else if err == nil {
			if c = max(c, uint64(data)/DiskChunkBytes); c >= n {
				return nil
			}
			if hole, err := unix.Seek(fd, data, unix.SEEK_HOLE); err == nil {
				end = min(n, max(c+1, diskChunks(uint64(hole))))
			}
		} // else: no SEEK_DATA here; read everything from c on
		for c < end {
			// One read per batch: fewer system calls, and a live
			// snapshot holds mu for one batch at a time.
			k := min(end-c, diskCopyBatchChunks)
			lo, hi := c*DiskChunkBytes, min((c+k)*DiskChunkBytes, size)
			batch := buf[:hi-lo]
			if mu != nil {
				mu.Lock()
			}
			_, err := f.ReadAt(batch, int64(lo))
			if mu != nil {
				mu.Unlock()
			}
			if err != nil {
				return fmt.Errorf("reading disk chunks %d-%d (bytes %d-%d of %s): %w", c, c+k-1, lo, hi, f.Name(), err)
			}
			for i := uint64(0); i < k; i, c = i+1, c+1 {
				chunk := batch[i*DiskChunkBytes : min((i+1)*DiskChunkBytes, uint64(len(batch)))]
				if !bytes.Equal(chunk, zeroChunk[:len(chunk)]) {
					if err := fn(c, chunk); err != nil {
						return err
					}
				}
			}
		}
	}
	return nil
}

// PreallocateDisk reserves every block of the disk file f on its
// filesystem (fallocate), so that the guest's writes to it cannot later
// fail for want of space: a block write the host cannot make durable would
// pause the VM until space returns. It returns an error that says what to
// do when the filesystem has no room for the whole file. A filesystem
// without fallocate (EOPNOTSUPP) is left as it is; so is a copy-on-write
// one, where a reservation does not cover rewrites: there a full disk
// still pauses the VM (see agent/diskwriter.go).
func PreallocateDisk(f *os.File) error {
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("disk %s: %w", f.Name(), err)
	}
	if st.Size() == 0 {
		return nil
	}
	err = unix.Fallocate(int(f.Fd()), 0, 0, st.Size())
	switch {
	case err == nil, errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOSYS):
		return nil
	case errors.Is(err, unix.ENOSPC), errors.Is(err, unix.EDQUOT):
		return fmt.Errorf("disk %s: its filesystem has no room for all of its %d bytes (fallocate: %w): free space there, or use a smaller disk, so that the guest's writes cannot fail later", f.Name(), st.Size(), err)
	}
	return fmt.Errorf("disk %s: reserving its %d bytes (fallocate): %w", f.Name(), st.Size(), err)
}

// zeroDisk makes the first size bytes of f read as zeros: it punches a
// hole over them and allocates them again (the file keeps its size and
// stays backed, so that the guest's writes cannot fail for space the
// restore gave back) or, on a filesystem that cannot, overwrites every
// non-zero chunk.
func zeroDisk(f *os.File, size uint64) error {
	if size == 0 {
		return nil
	}
	err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, int64(size))
	if err == nil {
		if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_KEEP_SIZE, 0, int64(size)); err != nil &&
			!errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) {
			return fmt.Errorf("reallocating the disk %s after zeroing it for a full restore: fallocate: %w: free space on its filesystem", f.Name(), err)
		}
		return nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("zeroing the disk %s before a full restore: fallocate(PUNCH_HOLE): %w", f.Name(), err)
	}
	return zeroDiskByWriting(f, size)
}

func zeroDiskByWriting(f *os.File, size uint64) error {
	return forEachNonZeroChunk(f, size, nil, func(c uint64, chunk []byte) error {
		if _, err := f.WriteAt(zeroChunk[:len(chunk)], int64(c*DiskChunkBytes)); err != nil {
			return fmt.Errorf("zeroing disk chunk %d of %s before a full restore: %w", c, f.Name(), err)
		}
		return nil
	})
}
