package vmm

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// The input log written by Recorder and read by Replayer. Little-endian:
//
//	file header (16 bytes):
//	  0   8  magic "FTVMRLOG"
//	  8   2  format version (1)
//	  10  2  reserved, 0
//	  12  4  CRC32C of bytes 0-11
//	then one record per device exit, in exit order:
//	  0   4  body length n (logBodyMinBytes to logBodyMaxBytes)
//	  4   4  CRC32C (Castagnoli) of the body
//	  8   n  body:
//	         0   1  kind: 1 input, 2 output
//	         1   1  device (1 console ... 6 halt, as in Device)
//	         2   2  reserved, 0
//	         4   4  op
//	         8   8  exit index
//	         16  8  request arg (sector, timeout, exit code)
//	         24  4  request len
//	         28  4  status given to the guest
//	         32  8  result given to the guest
//	         40     input: the data written at req.addr (the rest of the body)
//	                output: 32-byte SHA-256 of the output's bytes
//
// Inputs are logged in full, since replay must reproduce them; outputs only
// by digest, since replay must only recognise them. Why the lockstep log
// carries exits in another layout (agent/codec.go): "Record and replay" in
// doc.go.
const (
	logMagic        = "FTVMRLOG"
	logVersion      = 1
	logHeaderBytes  = 16
	logRecordHdr    = 8
	logFixedBytes   = 40
	logBodyMinBytes = logFixedBytes
	logBodyMaxBytes = logFixedBytes + nicRXBufferMaxBytes
	logKindInput    = 1
	logKindOutput   = 2
)

// ErrDivergence is wrapped by a Replayer error when the replayed guest
// does not do what the recorded one did.
var ErrDivergence = errors.New("replay diverged")

// DivergenceError says at which exit a replay left the recorded path and
// how.
type DivergenceError struct {
	Index uint64 // the exit index where it happened
	Got   string // what the replayed guest did
	Want  string // what the log says the recorded guest did
}

func (d *DivergenceError) Error() string {
	return fmt.Sprintf("%v at exit %d: the guest did %s, the log has %s", ErrDivergence, d.Index, d.Got, d.Want)
}
func (d *DivergenceError) Unwrap() error { return ErrDivergence }

// logRecord is one decoded record.
type logRecord struct {
	kind   uint8
	device Device
	op     uint32
	index  uint64
	arg    uint64
	len    uint32
	status int32
	value  uint64
	data   []byte // input data, or the output digest
}

func (r *logRecord) describe() string {
	k := "input"
	if r.kind == logKindOutput {
		k = "output"
	}
	return fmt.Sprintf("%s %s %s (arg %d, len %d) at exit %d", r.device, OpName(r.device, r.op), k, r.arg, r.len, r.index)
}

func appendLogRecord(b []byte, r *logRecord) []byte {
	body := make([]byte, logFixedBytes, logFixedBytes+len(r.data))
	body[0], body[1] = r.kind, byte(r.device)
	le.PutUint32(body[4:], r.op)
	le.PutUint64(body[8:], r.index)
	le.PutUint64(body[16:], r.arg)
	le.PutUint32(body[24:], r.len)
	le.PutUint32(body[28:], uint32(r.status))
	le.PutUint64(body[32:], r.value)
	body = append(body, r.data...)
	b = le.AppendUint32(b, uint32(len(body)))
	b = le.AppendUint32(b, crc32.Checksum(body, castagnoli))
	return append(b, body...)
}

func parseLogBody(body []byte) (*logRecord, error) {
	r := &logRecord{
		kind:   body[0],
		device: Device(body[1]),
		op:     le.Uint32(body[4:]),
		index:  le.Uint64(body[8:]),
		arg:    le.Uint64(body[16:]),
		len:    le.Uint32(body[24:]),
		status: int32(le.Uint32(body[28:])),
		value:  le.Uint64(body[32:]),
		data:   body[logFixedBytes:],
	}
	if r.kind != logKindInput && r.kind != logKindOutput {
		return nil, fmt.Errorf("record kind %d is neither input (1) nor output (2)", r.kind)
	}
	if _, ok := lookupOp(r.device, r.op); !ok {
		return nil, fmt.Errorf("record names unknown device %d op %d", body[1], r.op)
	}
	if body[2]|body[3] != 0 {
		return nil, errors.New("record has non-zero reserved bytes")
	}
	if r.kind == logKindOutput && len(r.data) != sha256.Size {
		return nil, fmt.Errorf("output record carries %d digest bytes, want %d", len(r.data), sha256.Size)
	}
	return r, nil
}

// Recorder is an ExitHook that runs the VM live (inputs from the devices,
// outputs delivered at once) and writes every exit to a log, which a
// Replayer feeds to another VM. Call Close when the VM has stopped.
type Recorder struct {
	w       *bufio.Writer
	buf     []byte
	started bool
}

var _ ExitHook = (*Recorder)(nil)

// NewRecorder writes the log to w.
func NewRecorder(w io.Writer) *Recorder {
	return &Recorder{w: bufio.NewWriterSize(w, 1<<16)}
}

// OnExit implements ExitHook.
func (r *Recorder) OnExit(e *Exit) (Result, error) {
	if !r.started {
		hdr := append([]byte(logMagic), 0, 0, 0, 0)
		le.PutUint16(hdr[8:], logVersion)
		hdr = le.AppendUint32(hdr, crc32.Checksum(hdr, castagnoli))
		if _, err := r.w.Write(hdr); err != nil {
			return Result{}, fmt.Errorf("writing the input log: %w", err)
		}
		r.started = true
	}
	rec := logRecord{device: e.Device, op: e.Op, index: e.Index, arg: e.Arg, len: e.Len}
	var res Result
	if e.Dir == DirInput {
		var err error
		if res, err = e.Live(); err != nil {
			return Result{}, err
		}
		rec.kind, rec.data = logKindInput, res.Data
	} else {
		res = e.Deliver()
		sum := sha256.Sum256(e.Data)
		rec.kind, rec.data = logKindOutput, sum[:]
	}
	rec.status, rec.value = res.Status, res.Value
	r.buf = appendLogRecord(r.buf[:0], &rec)
	if _, err := r.w.Write(r.buf); err != nil {
		return Result{}, fmt.Errorf("writing the input log: %w", err)
	}
	if e.Device == DeviceHalt {
		// The guest is done: make the log complete without waiting for Close.
		if err := r.w.Flush(); err != nil {
			return Result{}, fmt.Errorf("writing the input log: %w", err)
		}
	}
	return res, nil
}

// Close flushes the log. It does not close the underlying writer.
func (r *Recorder) Close() error { return r.w.Flush() }

// Replayer is an ExitHook that feeds a recorded log to a VM: each input
// gets the recorded result (the devices are never touched), and each
// output is compared with the recorded one and dropped. The first exit
// that differs from the log (another index, device, op, request argument
// or output) stops the VM with a DivergenceError.
type Replayer struct {
	r      *bufio.Reader
	offset int64
	hdr    bool
	// Deliver, when set, delivers matching outputs live instead of
	// dropping them.
	Deliver bool
	// LiveAfterEnd, when set, makes the VM go live where the log ends (a
	// replica taking over after the primary died): later inputs come from
	// the devices and outputs are delivered. Unset, running past the end
	// of the log is a divergence.
	LiveAfterEnd bool
	live         bool
}

var _ ExitHook = (*Replayer)(nil)

// NewReplayer reads the log from r.
func NewReplayer(r io.Reader) *Replayer {
	return &Replayer{r: bufio.NewReaderSize(r, 1<<16)}
}

func (p *Replayer) readHeader() error {
	var hdr [logHeaderBytes]byte
	if _, err := io.ReadFull(p.r, hdr[:]); err != nil {
		return fmt.Errorf("input log header: %w (the log is empty or truncated)", err)
	}
	p.offset = logHeaderBytes
	if string(hdr[:8]) != logMagic {
		return fmt.Errorf("input log magic is %q, want %q: not an ftvm input log", hdr[:8], logMagic)
	}
	if v := le.Uint16(hdr[8:]); v != logVersion {
		return fmt.Errorf("input log format version %d; this VMM reads version %d", v, logVersion)
	}
	if crc32.Checksum(hdr[:12], castagnoli) != le.Uint32(hdr[12:]) {
		return errors.New("input log header checksum mismatch: the log is corrupt")
	}
	p.hdr = true
	return nil
}

// next reads one record; io.EOF means the log ended cleanly.
func (p *Replayer) next() (*logRecord, error) {
	if !p.hdr {
		if err := p.readHeader(); err != nil {
			return nil, err
		}
	}
	var h [logRecordHdr]byte
	n, err := io.ReadFull(p.r, h[:])
	if err == io.EOF {
		return nil, io.EOF
	}
	if err != nil {
		return nil, fmt.Errorf("input log truncated at byte %d (%d of %d header bytes)", p.offset, n, logRecordHdr)
	}
	size := le.Uint32(h[:])
	if size < logBodyMinBytes || size > logBodyMaxBytes {
		return nil, fmt.Errorf("input log record at byte %d claims %d bytes (want %d to %d): the log is corrupt", p.offset, size, logBodyMinBytes, logBodyMaxBytes)
	}
	body := make([]byte, size)
	if _, err := io.ReadFull(p.r, body); err != nil {
		return nil, fmt.Errorf("input log truncated at byte %d: record needs %d bytes", p.offset, size)
	}
	if crc32.Checksum(body, castagnoli) != le.Uint32(h[4:]) {
		return nil, fmt.Errorf("input log record at byte %d fails its checksum: the log is corrupt", p.offset)
	}
	rec, err := parseLogBody(body)
	if err != nil {
		return nil, fmt.Errorf("input log record at byte %d: %w", p.offset, err)
	}
	p.offset += logRecordHdr + int64(size)
	return rec, nil
}

// OnExit implements ExitHook.
func (p *Replayer) OnExit(e *Exit) (Result, error) {
	if p.live {
		return LiveHook{}.OnExit(e)
	}
	got := fmt.Sprintf("%s %s %s (arg %d, len %d) at exit %d", e.Device, OpName(e.Device, e.Op), e.Dir, e.Arg, e.Len, e.Index)
	rec, err := p.next()
	if err == io.EOF && p.LiveAfterEnd {
		p.live = true
		return LiveHook{}.OnExit(e)
	}
	if err == io.EOF {
		return Result{}, &DivergenceError{Index: e.Index, Got: got, Want: "no more records (the recorded guest had stopped)"}
	}
	if err != nil {
		return Result{}, err
	}
	wantKind := uint8(logKindInput)
	if e.Dir == DirOutput {
		wantKind = logKindOutput
	}
	if rec.index != e.Index || rec.device != e.Device || rec.op != e.Op || rec.kind != wantKind || rec.arg != e.Arg || rec.len != e.Len {
		return Result{}, &DivergenceError{Index: e.Index, Got: got, Want: rec.describe()}
	}
	res := Result{Status: rec.status, Value: rec.value}
	if e.Dir == DirInput {
		res.Data = rec.data
		return res, nil
	}
	if sum := sha256.Sum256(e.Data); !bytes.Equal(sum[:], rec.data) {
		return Result{}, &DivergenceError{Index: e.Index, Got: got + " with different bytes", Want: "the recorded output (SHA-256 differs)"}
	}
	if p.Deliver {
		e.Deliver()
	}
	return res, nil
}

// Live reports whether the replay has run past the end of the log and
// gone live (LiveAfterEnd).
func (p *Replayer) Live() bool { return p.live }

// Done reports whether the whole log was consumed: nil if so, an error
// naming the next unreplayed record otherwise.
func (p *Replayer) Done() error {
	if p.live {
		return nil
	}
	rec, err := p.next()
	if err == io.EOF {
		return nil
	}
	if err != nil {
		return err
	}
	return fmt.Errorf("the log goes on after the replay stopped: next is %s", rec.describe())
}
