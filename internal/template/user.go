package template

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// The unprivileged user every template gets, for commands and files that
// should not run as root (the API's user "user").
const (
	UserName = "user"
	UserID   = 1000
	UserHome = "home/user"
)

// addUser gives the rootfs the user "user" (uid and gid 1000, home
// /home/user, which it owns, as it owns /workspace) unless it has a user of
// that name already. An image whose uid 1000 or gid 1000 belongs to
// someone else is left alone: its sandboxes answer user "user" with a
// clear error rather than share an identity.
func addUser(root *os.Root) error {
	passwd, err := readRootFile(root, "etc/passwd")
	if err != nil {
		return nil // no passwd at all (a scratch image): nothing to add to
	}
	group, _ := readRootFile(root, "etc/group")
	if hasEntry(passwd, func(f []string) bool { return f[0] == UserName }) {
		return nil
	}
	if hasEntry(passwd, func(f []string) bool { return len(f) > 2 && f[2] == fmt.Sprint(UserID) }) ||
		hasEntry(group, func(f []string) bool { return f[0] == UserName || len(f) > 2 && f[2] == fmt.Sprint(UserID) }) {
		return nil
	}
	shell := "/bin/sh"
	if fi, err := root.Stat("bin/bash"); err == nil && fi.Mode().IsRegular() {
		shell = "/bin/bash"
	}
	if err := appendRootFile(root, "etc/passwd", fmt.Sprintf("%s:x:%d:%d:sandbox user:/%s:%s\n", UserName, UserID, UserID, UserHome, shell)); err != nil {
		return err
	}
	if err := appendRootFile(root, "etc/group", fmt.Sprintf("%s:x:%d:\n", UserName, UserID)); err != nil {
		return err
	}
	if _, err := root.Lstat("etc/shadow"); err == nil {
		if err := appendRootFile(root, "etc/shadow", UserName+":*:20000:0:99999:7:::\n"); err != nil {
			return err
		}
	}
	if err := replaceUnless(root, UserHome, fs.FileInfo.IsDir); err != nil {
		return err
	}
	if err := root.MkdirAll(UserHome, 0o755); err != nil {
		return fmt.Errorf("template rootfs: %s: %w", UserHome, err)
	}
	for _, dir := range []string{UserHome, "workspace"} {
		if err := root.Lchown(dir, UserID, UserID); err != nil {
			return fmt.Errorf("template rootfs: chown %s: %w", dir, err)
		}
	}
	return nil
}

func readRootFile(root *os.Root, name string) ([]byte, error) {
	fi, err := root.Lstat(name)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("template rootfs: %s is not a regular file", name)
	}
	return root.ReadFile(name)
}

func hasEntry(b []byte, match func(fields []string) bool) bool {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if f := strings.Split(sc.Text(), ":"); len(f) > 0 && match(f) {
			return true
		}
	}
	return false
}

// appendRootFile adds line to a regular file of the rootfs (never through
// a symlink), after a newline if the file does not end in one.
func appendRootFile(root *os.Root, name, line string) error {
	b, err := readRootFile(root, name)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if len(b) > 0 && b[len(b)-1] != '\n' {
		line = "\n" + line
	}
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("template rootfs: %s: %w", name, err)
	}
	if _, err := f.WriteString(line); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
