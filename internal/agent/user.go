package agent

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
)

// account is a user of the sandbox's /etc/passwd that a command runs as.
type account struct {
	name     string
	uid, gid uint32
	home     string
}

// root is who commands run as unless a call names another user.
var root = account{name: "root", home: "/root"}

// passwdFile is read on every lookup: a command may add users.
var passwdFile = "/etc/passwd"

// lookupUser finds name in the sandbox's /etc/passwd; "" and "root" are
// root. A missing user is a wire.Error with CodeNoUser.
func lookupUser(name string) (account, error) {
	if name == "" || name == "root" {
		return root, nil
	}
	noUser := &wire.Error{Code: wire.CodeNoUser, Message: fmt.Sprintf("the sandbox has no user %q in /etc/passwd (templates built before users were added lack 'user': rebuild them)", name)}
	if strings.ContainsAny(name, ":\n\x00") {
		return account{}, noUser
	}
	f, err := os.Open(passwdFile)
	if err != nil {
		return account{}, noUser
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// name:password:uid:gid:gecos:home:shell
		fields := strings.Split(sc.Text(), ":")
		if len(fields) < 7 || fields[0] != name {
			continue
		}
		uid, err1 := strconv.ParseUint(fields[2], 10, 32)
		gid, err2 := strconv.ParseUint(fields[3], 10, 32)
		if err1 != nil || err2 != nil {
			return account{}, noUser
		}
		home := fields[5]
		if home == "" {
			home = "/"
		}
		return account{name: name, uid: uint32(uid), gid: uint32(gid), home: home}, nil
	}
	return account{}, noUser
}

func (u account) isRoot() bool { return u.uid == 0 }

// credential switches a started process to u, with no supplementary
// groups (it must not keep root's); nil for root.
func (u account) credential() *syscall.Credential {
	if u.isRoot() {
		return nil
	}
	return &syscall.Credential{Uid: u.uid, Gid: u.gid, Groups: []uint32{}}
}

// env adds the user's HOME, USER and LOGNAME to a command's environment
// unless the sandbox's or the call's variables set them.
func (u account) env(m map[string]string, sandboxAndCall func(string) bool) {
	if u.isRoot() {
		return
	}
	for k, v := range map[string]string{"HOME": u.home, "USER": u.name, "LOGNAME": u.name} {
		if !sandboxAndCall(k) {
			m[k] = v
		}
	}
}

// restoreDumpable undoes what starting a process as another user does to
// the agent: the child's setuid, made while it still shares the agent's
// memory (Go starts children with vfork), marks that memory non-dumpable,
// and a non-dumpable agent's /proc/1/fd is closed to the root commands
// whose zygote reports its status through it (a `set -e` command then
// ended with status 2).
func restoreDumpable() { _ = unix.Prctl(unix.PR_SET_DUMPABLE, 1, 0, 0, 0) }
