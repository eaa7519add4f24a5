// Package wire encodes the lockstep protocol's messages.
//
// Each message type lives in its own file with an Append method that appends
// the complete frame to a caller's buffer (no allocation of its own beyond
// what append needs) and a parse function reached through Parse. Parse never
// panics on hostile input and allocates only the message struct (and the VM
// id string, at most MaxVMIDBytes): byte fields alias the input, and every length is checked against a named bound
// (MaxEntryDataBytes, MaxOutputDataBytes, MaxChunkDataBytes, MaxVMIDBytes,
// MaxCheckpointBytes, MaxResyncBaseBytes, MaxBodyBytes) before it is used.
//
// # Frame
//
// All integers are little-endian.
//
//	offset size field
//	0      1    frame version (Version = 1)
//	1      1    message type (Type)
//	2      8    epoch of the sender
//	10     8    fence token the arbiter granted for that epoch (0: none yet)
//	18     4    body length B (<= MaxBodyBytes)
//	22     B    body, laid out per type below
//	22+B   4    CRC32C (Castagnoli) of bytes [0, 22+B)
//
// # Bodies
//
// A "bytes" field is a u32 length followed by that many bytes.
//
//	hello (1)           u16 protocol version, u8 role (1 primary, 2 secondary),
//	                    u16 vm id length (<= MaxVMIDBytes), vm id
//	entry (2)           u64 seq, u64 exit index, u16 kind,
//	                    bytes data (<= MaxEntryDataBytes)
//	output (3)          u64 seq, u64 exit index, u16 device,
//	                    u32 length (<= MaxOutputDataBytes), [32] SHA-256 of data,
//	                    u8 has-data (0/1), then bytes data if has-data
//	                    (its length must equal the length field)
//	ack (4)             u64 received, u64 compared, u64 replayed (all cumulative)
//	heartbeat (5)       u64 last seq, u64 released through
//	resync-request (6)  u8 reason (1 output mismatch, 2 input mismatch), u64 at seq,
//	                    bytes base (<= MaxResyncBaseBytes; since protocol version 5)
//	checkpoint-chunk (7) u64 id, u64 seq, u64 offset,
//	                    bytes data (<= MaxChunkDataBytes; offset+len <= MaxCheckpointBytes)
//	checkpoint-done (8) u64 id, u64 seq, u64 total (<= MaxCheckpointBytes),
//	                    [32] digest of the checkpoint (below), u8 full, u8 restored,
//	                    u8 part (a pre-copy part: more follow), u64 base
//	                    (first part of the chain this one ends; 0: none; <= id)
//	go-live (9)         u64 last seq of the log the new primary continues
//	fence (10)          u64 refused epoch
//	checkpoint-ack (11) u64 id, u64 through (<= MaxCheckpointBytes), u8 kept (0/1),
//	                    u8 missing (0/1; not both)
//
// A checkpoint's payload (the bytes its chunks carry, total of them) is
// the node's section (u64 released-through, u32 count, count × (u64 seq,
// u16 device, u32 len, data): the outputs held at the checkpoint), then
// the VMM's data. Since protocol version 4 checkpoint-done's digest is
//
//	SHA-256( SHA-256(node section) || D(VMM data) )
//
// (|| concatenates the two 32-byte digests), so that the primary's VMM
// side digests its data where it makes it and the node hashes only its
// small section; the secondary parses the section to find where the data
// begins and checks the same. Since protocol version 6 D(data), of n
// bytes, is eight CRC32C (Castagnoli) lanes, each u32 little-endian:
//
//	CRC32C(data[0 : n/8]) || CRC32C(data[n/8 : 2n/8]) || ... || CRC32C(data[7n/8 : n])
//
// (lane i covers bytes [i×n/8, (i+1)×n/8), integer division; lockstep.
// DataDigest); in versions 4 and 5 it was SHA-256(data). It checks for
// corruption and a wrong assembly of the chunks; the transport
// authenticates the frames. SHA-256 of a resync's 4 MB took 2.7 to 3.8
// ms on each host inside the pause, CRC32C 0.2 ms.
//
// checkpoint-ack (protocol version 3) goes from the secondary to the
// primary, byte by byte after the frame header:
//
//	offset size field
//	0      8    id: the checkpoint (one part of a pre-copy chain) acknowledged
//	8      8    through: the secondary holds bytes [0, through) of it, in
//	            chunks it received in order or filled in since (cumulative)
//	16     1    kept: 1 once the whole checkpoint arrived and matched its
//	            checkpoint-done's total and digest (it is kept as a pre-copy
//	            part or being restored); 0 otherwise
//	17     1    missing: 1 when the secondary knows it lacks the chunk at
//	            through (the checkpoint-done came, or the chain's end did
//	            and this part is not kept); never with kept
//
// The primary keeps at most Config.CheckpointWindowBytes of a checkpoint
// sent and not acknowledged, resends from through only (on a timeout, or
// once three acks repeat the same through while later chunks arrive, or on
// missing), and never sends a kept checkpoint again. A missing ack below
// what was acknowledged before means the secondary lost its copy: the
// primary sends again from there. A plain ack below it is a late one.
//
// A resync-request's base (protocol version 5) is the secondary VMM's
// account of the state it holds: the checkpoint it last restored and the
// pages and disk chunks it changed since (vmm.DirtySet's encoding, which
// documents its layout). The protocol does not read it: the primary's
// node hands it to its VMM with the checkpoint it asks for
// (lockstep.Checkpoint.Base), which, when its own VM stands on the same
// checkpoint, sends an increment over it holding both sides' changes.
// Empty means none: the checkpoint then stands alone (a full one).
//
// A body with bytes left over after its last field is refused, so every
// valid frame has exactly one encoding and Parse(Append(m)) round-trips.
package wire
