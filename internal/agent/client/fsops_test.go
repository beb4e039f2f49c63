package client

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
)

func TestStatMkdirRenameExists(t *testing.T) {
	c := startPair(t)
	ctx := context.Background()
	dir := t.TempDir()
	st, err := c.Mkdir(ctx, wire.FS{Path: dir + "/a/b/c", Parents: true, Mode: 0o750})
	if err != nil || st.Type != "dir" || st.Mode != 0o750 || st.Owner != "root" || st.Name != "c" {
		t.Fatalf("mkdir -p: %+v %v", st, err)
	}
	if _, err := c.Mkdir(ctx, wire.FS{Path: dir + "/a/b/c"}); !IsAgentError(err, wire.CodeExists) {
		t.Errorf("mkdir of an existing dir without parents: %v", err)
	}
	if _, err := c.Mkdir(ctx, wire.FS{Path: dir + "/x/y"}); !IsAgentError(err, wire.CodeNotFound) {
		t.Errorf("mkdir without parents under a missing one: %v", err)
	}
	if err := os.WriteFile(dir+"/f", []byte("12345"), 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Mkdir(ctx, wire.FS{Path: dir + "/f", Parents: true}); !IsAgentError(err, wire.CodeExists) && !IsAgentError(err, wire.CodeNotDir) {
		t.Errorf("mkdir -p over a file: %v", err)
	}
	if err := os.Symlink("f", dir+"/link"); err != nil {
		t.Fatal(err)
	}
	st, err = c.StatX(ctx, wire.FS{Path: dir + "/link"})
	if err != nil || st.Type != "symlink" || st.Target != "f" {
		t.Fatalf("stat symlink: %+v %v", st, err)
	}
	st, err = c.StatX(ctx, wire.FS{Path: dir + "/f"})
	if err != nil || st.Type != "file" || st.Size != 5 || st.Mode != 0o640 || st.ModifyNS == 0 || st.ChangeNS == 0 || st.AccessNS == 0 {
		t.Fatalf("stat file: %+v %v", st, err)
	}
	if _, err := c.StatX(ctx, wire.FS{Path: dir + "/missing"}); !IsAgentError(err, wire.CodeNotFound) {
		t.Errorf("stat missing: %v", err)
	}
	if st, err := c.Exists(ctx, wire.FS{Path: dir + "/missing/deeper"}); err != nil || st.Exists {
		t.Errorf("exists missing: %+v %v", st, err)
	}
	if st, err := c.Exists(ctx, wire.FS{Path: dir + "/f"}); err != nil || !st.Exists || st.Type != "file" {
		t.Errorf("exists: %+v %v", st, err)
	}
	if err := os.WriteFile(dir+"/g", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Rename(ctx, wire.FS{Path: dir + "/f", Dest: dir + "/g"}); !IsAgentError(err, wire.CodeExists) {
		t.Errorf("rename onto an existing file: %v", err)
	}
	st, err = c.Rename(ctx, wire.FS{Path: dir + "/f", Dest: dir + "/g", Overwrite: true})
	if err != nil || st.Size != 5 || st.Name != "g" {
		t.Fatalf("rename with overwrite: %+v %v", st, err)
	}
	if st, err := c.Rename(ctx, wire.FS{Path: dir + "/a", Dest: dir + "/moved"}); err != nil || st.Type != "dir" {
		t.Fatalf("rename dir: %+v %v", st, err)
	}
	for _, bad := range []wire.FS{{Path: "relative"}, {Path: dir + "/../etc"}, {Path: "/", Dest: dir + "/root"}, {Path: dir + "/g", Dest: ""}} {
		if _, err := c.Rename(ctx, bad); !IsAgentError(err, wire.CodeInvalidPath) {
			t.Errorf("rename %+v: %v", bad, err)
		}
	}
}

// A recursive watch sees files created in order, in subdirectories made
// after it started, renames, chmods and removals, with paths relative to
// the watched directory; ending ctx ends it.
func TestWatch(t *testing.T) {
	c := startPair(t)
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := make(chan wire.WatchEvent, 1000)
	started := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- c.Watch(ctx, wire.FS{Path: dir, Recursive: true}, func(wire.WatchStarted) { close(started) },
			func(ev wire.WatchEvent) error { events <- ev; return nil })
	}()
	select {
	case <-started:
	case err := <-done:
		t.Fatal(err)
	}
	next := func() wire.WatchEvent {
		select {
		case ev := <-events:
			return ev
		case <-time.After(20 * time.Second):
			t.Fatal("no event")
		}
		return wire.WatchEvent{}
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if ev := next(); ev != (wire.WatchEvent{Type: "create", Path: "sub", IsDir: true}) {
		t.Fatalf("mkdir: %+v", ev)
	}
	for i := range 100 {
		if err := os.WriteFile(filepath.Join(dir, "sub", fmt.Sprintf("f%03d", i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 100 {
		if ev := next(); ev.Type != "create" || ev.Path != fmt.Sprintf("sub/f%03d", i) {
			t.Fatalf("file %d: %+v", i, ev)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "sub", "f000"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if ev := next(); ev.Type != "write" || ev.Path != "sub/f000" {
		t.Fatalf("write: %+v", ev)
	}
	if err := os.Rename(filepath.Join(dir, "sub"), filepath.Join(dir, "renamed")); err != nil {
		t.Fatal(err)
	}
	ev := next()
	for ev.Type == "write" && ev.Path == "sub/f000" { // a truncate and a write may come apart
		ev = next()
	}
	if ev != (wire.WatchEvent{Type: "rename", From: "sub", Path: "renamed", IsDir: true}) {
		t.Fatalf("rename: %+v", ev)
	}
	if err := os.Chmod(filepath.Join(dir, "renamed", "f001"), 0o600); err != nil {
		t.Fatal(err)
	}
	if ev := next(); ev.Type != "chmod" || ev.Path != "renamed/f001" {
		t.Fatalf("chmod after the rename: %+v", ev)
	}
	if err := os.Remove(filepath.Join(dir, "renamed", "f002")); err != nil {
		t.Fatal(err)
	}
	if ev := next(); ev.Type != "remove" || ev.Path != "renamed/f002" {
		t.Fatalf("remove: %+v", ev)
	}
	cancel()
	select {
	case err := <-done:
		if err == nil {
			t.Error("a cancelled watch returned nil")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the watch did not end with its context")
	}
	// Watching a file or a missing path is refused.
	if err := c.Watch(context.Background(), wire.FS{Path: dir + "/renamed/f000"}, nil, nil); !IsAgentError(err, wire.CodeNotDir) {
		t.Errorf("watch a file: %v", err)
	}
	if err := c.Watch(context.Background(), wire.FS{Path: dir + "/nope"}, nil, nil); !IsAgentError(err, wire.CodeNotFound) {
		t.Errorf("watch a missing dir: %v", err)
	}
}
