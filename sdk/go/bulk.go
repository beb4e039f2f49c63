package orkestr

import (
	"io"
	"sync"
)

// bulkBuffers hold the buffers file transfers copy through. io.Copy reads
// 32 KiB at a time and io.Discard 8 KiB, each read and write a system call;
// at a file transfer's speed those calls were most of the client's CPU
// (2.4 s per GB for a CLI download), where 1 MiB pieces cost a fraction.
var bulkBuffers = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// copyBulk copies r to w in pieces of up to 1 MiB. Neither side's
// ReadFrom or WriteTo is used: for an HTTP body and an ordinary writer
// they fall back to io.Copy's small buffer.
func copyBulk(w io.Writer, r io.Reader) (int64, error) {
	bp := bulkBuffers.Get().(*[]byte)
	defer bulkBuffers.Put(bp)
	return io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{r}, *bp)
}
