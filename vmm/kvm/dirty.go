package kvm

import "math/bits"

// PageBytes is the page KVM's dirty log counts in: one bit per 4 KiB page.
const PageBytes = 4096

// DirtyPages lists the page numbers (relative to the slot's first page)
// whose bit is set in a bitmap from VM.GetDirtyLog, in increasing order,
// leaving out bits at or past pages (the tail of the last word).
func DirtyPages(bitmap []uint64, pages uint64) []uint64 {
	var out []uint64
	for i, w := range bitmap {
		for w != 0 {
			b := uint64(bits.TrailingZeros64(w))
			p := uint64(i)*64 + b
			if p < pages {
				out = append(out, p)
			}
			w &= w - 1
		}
	}
	return out
}

// BitmapWords is the number of 64-bit words of a dirty bitmap of size
// bytes.
func BitmapWords(size uint64) int {
	pages := (size + PageBytes - 1) / PageBytes
	return int((pages + 63) / 64)
}
