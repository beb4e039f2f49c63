package agent

import (
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
)

// inotifyRecord encodes one inotify event as the kernel returns it.
func inotifyRecord(wd int32, mask, cookie uint32, name string) []byte {
	padded := (len(name) + 1 + 15) / 16 * 16
	b := make([]byte, unix.SizeofInotifyEvent+padded)
	binary.NativeEndian.PutUint32(b[0:], uint32(wd))
	binary.NativeEndian.PutUint32(b[4:], mask)
	binary.NativeEndian.PutUint32(b[8:], cookie)
	binary.NativeEndian.PutUint32(b[12:], uint32(padded))
	copy(b[unix.SizeofInotifyEvent:], name)
	return b
}

// The halves of a move read apart are still one rename; a first half
// alone is a move out of the tree.
func TestWatchParsePairsMovesAcrossReads(t *testing.T) {
	wt := &watcher{root: "/w", dirs: map[int]string{1: "", 2: "sub"}}
	moved := map[uint32]int{}
	events, gone := wt.parse(inotifyRecord(1, unix.IN_MOVED_FROM, 7, "a"), nil, moved)
	if gone || len(events) != 1 || len(moved) != 1 {
		t.Fatalf("first half: %+v %v %v", events, moved, gone)
	}
	events, _ = wt.parse(append(inotifyRecord(2, unix.IN_MOVED_TO, 7, "b"), inotifyRecord(2, unix.IN_MOVED_FROM, 8, "c")...), events, moved)
	want := []wire.WatchEvent{{Type: "rename", From: "a", Path: "sub/b"}, {Type: "rename", From: "sub/c"}}
	if len(events) != 2 || events[0] != want[0] || events[1] != want[1] || len(moved) != 1 {
		t.Fatalf("got %+v (pending %v), want %+v", events, moved, want)
	}
}
