package verbs

import (
	"encoding/binary"
	"strings"
	"testing"
)

func goodParams() params {
	p := params{qpn: 0x11, psn: 0xabcdef, rkey: 0x1234, mtu: 3, addr: 0x7f0000000000, size: 1 << 16}
	copy(p.gid[:], []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1})
	return p
}

// badParams is every malformed Params this package must refuse, built by
// mutating a good encoding: Connect's test feeds the same cases to a real
// endpoint.
func badParams(good []byte) map[string][]byte {
	mut := func(f func(b []byte) []byte) []byte {
		return f(append([]byte(nil), good...))
	}
	put32 := func(off int, v uint32) []byte {
		return mut(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[off:], v); return b })
	}
	put64 := func(off int, v uint64) []byte {
		return mut(func(b []byte) []byte { binary.LittleEndian.PutUint64(b[off:], v); return b })
	}
	return map[string][]byte{
		"empty":          {},
		"short header":   good[:7],
		"truncated":      good[:len(good)-1],
		"trailing byte":  append(append([]byte(nil), good...), 0),
		"magic":          mut(func(b []byte) []byte { b[0] = 'X'; return b }),
		"version 2":      mut(func(b []byte) []byte { binary.LittleEndian.PutUint16(b[4:], 2); return b }),
		"length field":   mut(func(b []byte) []byte { binary.LittleEndian.PutUint16(b[6:], 57); return b }),
		"qpn 0":          put32(8, 0),
		"qpn 25 bits":    put32(8, 1<<24),
		"psn 25 bits":    put32(12, 1<<24),
		"mtu 0":          mut(func(b []byte) []byte { b[20] = 0; return b }),
		"mtu 6":          mut(func(b []byte) []byte { b[20] = 6; return b }),
		"gid type v1":    mut(func(b []byte) []byte { b[21] = 1; return b }),
		"reserved":       mut(func(b []byte) []byte { b[23] = 1; return b }),
		"gid zero":       mut(func(b []byte) []byte { clear(b[24:40]); return b }),
		"addr 0":         put64(40, 0),
		"size 0":         put64(48, 0),
		"size unaligned": put64(48, 4097),
		"size too big":   put64(48, MaxRegionSize+pageSize),
		"size huge":      put64(48, 1<<63),
		"addr wraps":     put64(40, ^uint64(0)-4095),
	}
}

func TestParamsRoundTrip(t *testing.T) {
	p := goodParams()
	b := appendParams(nil, p)
	if len(b) != paramsLen {
		t.Fatalf("encoding is %d bytes, want %d", len(b), paramsLen)
	}
	got, err := parseParams(b)
	if err != nil {
		t.Fatalf("parseParams(good): %v", err)
	}
	if got != p {
		t.Fatalf("round trip: got %+v, want %+v", got, p)
	}
	// The layout is the package doc's: spot-check fixed offsets.
	if string(b[:4]) != "FTVR" || binary.LittleEndian.Uint32(b[8:]) != p.qpn || binary.LittleEndian.Uint64(b[48:]) != p.size || b[21] != 2 {
		t.Fatalf("encoding does not follow the documented layout: % x", b)
	}
}

func TestParamsRefused(t *testing.T) {
	good := appendParams(nil, goodParams())
	for name, b := range badParams(good) {
		if _, err := parseParams(b); err == nil {
			t.Errorf("%s: parseParams accepted % x", name, b)
		} else if !strings.HasPrefix(err.Error(), "verbs: ") {
			t.Errorf("%s: error %q does not name the package", name, err)
		}
	}
}

// FuzzParams: no input makes parseParams panic, and whatever it accepts
// encodes back to the same bytes.
func FuzzParams(f *testing.F) {
	good := appendParams(nil, goodParams())
	f.Add(good)
	for _, b := range badParams(good) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := parseParams(b)
		if err != nil {
			return
		}
		if again := appendParams(nil, p); string(again) != string(b) {
			t.Fatalf("accepted % x but it encodes back as % x", b, again)
		}
		if p.size == 0 || p.size > MaxRegionSize || p.size%pageSize != 0 || p.qpn == 0 || p.qpn > maxQPN {
			t.Fatalf("accepted out-of-bounds params %+v", p)
		}
	})
}
