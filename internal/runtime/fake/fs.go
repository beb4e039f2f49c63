package fake

import (
	"fmt"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
	"github.com/orkestr-eu/orkestr/internal/runtime"
)

type kind uint8

const (
	kindDir kind = iota
	kindFile
	kindLink
)

// node is one file, directory or symlink of a sandbox's in-memory tree.
type node struct {
	Kind     kind
	Mode     uint32 // permission bits
	Data     []byte
	Target   string
	Children map[string]*node
	Modified time.Time
	UID      uint32 // owner: 0 root, 1000 the user
}

func newDir(mode uint32) *node {
	return &node{Kind: kindDir, Mode: mode, Children: map[string]*node{}, Modified: time.Now().UTC()}
}

// tree is a sandbox's file system. It is guarded by its sandbox's mutex.
type tree struct {
	Root *node
	Used int64 // bytes of file contents held
}

// baseTree is what every new sandbox starts with: the directories a
// template has.
func baseTree() *tree {
	t := &tree{Root: newDir(0o755)}
	for _, d := range []string{"/bin", "/etc", "/home/user", "/opt", "/root", "/tmp", "/usr/bin", "/var", "/workspace"} {
		n := t.Root
		for _, c := range strings.Split(d[1:], "/") {
			if n.Children[c] == nil {
				n.Children[c] = newDir(0o755)
			}
			n = n.Children[c]
		}
	}
	t.Root.Children["tmp"].Mode = 0o1777
	t.Root.Children["root"].Mode = 0o700
	t.Root.Children["workspace"].UID = userUID
	t.Root.Children["home"].Children["user"].UID = userUID
	t.Root.Children["etc"].Children["hostname"] = &node{Kind: kindFile, Mode: 0o644, Data: []byte("sandbox\n"), Modified: time.Now().UTC()}
	t.Used = int64(len("sandbox\n"))
	return t
}

// checkPath applies the files API's path rules: those of the agent
// (wire.CheckPath) and the file system's bound on one name.
func checkPath(p string) error {
	if err := wire.CheckPath(p); err != nil {
		return fmt.Errorf("%w: %v", runtime.ErrInvalidPath, err)
	}
	for _, c := range strings.Split(p, "/") {
		if len(c) > 255 {
			return fmt.Errorf("%w: a path element is longer than 255 bytes", runtime.ErrInvalidPath)
		}
	}
	return nil
}

func split(p string) []string {
	var out []string
	for _, c := range strings.Split(p, "/") {
		if c != "" && c != "." {
			out = append(out, c)
		}
	}
	return out
}

// where is a resolved path: the directory holding it, its name there and
// its node (nil if it does not exist), and its path with links resolved.
type where struct {
	dir  *node
	name string
	n    *node
	abs  string
}

// resolve walks p from the root, following symbolic links in every
// element but the last, which it follows only with followLast. Links
// resolve inside the tree: ".." stops at its root, and an absolute target
// starts from it.
func (t *tree) resolve(p string, followLast bool) (where, error) {
	stack := []*node{t.Root}
	names := []string{}
	comps := split(p)
	links := 0
	if len(comps) == 0 {
		return where{n: t.Root, abs: "/"}, nil
	}
	for len(comps) > 0 {
		c := comps[0]
		comps = comps[1:]
		cur := stack[len(stack)-1]
		if c == ".." {
			if len(stack) > 1 {
				stack, names = stack[:len(stack)-1], names[:len(names)-1]
			}
			if len(comps) == 0 {
				cur = stack[len(stack)-1]
				if len(stack) == 1 {
					return where{n: t.Root, abs: "/"}, nil
				}
				return where{dir: stack[len(stack)-2], name: names[len(names)-1], n: cur, abs: "/" + strings.Join(names, "/")}, nil
			}
			continue
		}
		if cur.Kind != kindDir {
			return where{}, fmt.Errorf("%w: %s", runtime.ErrNotDir, p)
		}
		child := cur.Children[c]
		last := len(comps) == 0
		if child == nil {
			if last {
				return where{dir: cur, name: c, abs: "/" + path.Join(append(names, c)...)}, nil
			}
			return where{}, fmt.Errorf("%w: %s", runtime.ErrFileNotFound, p)
		}
		if child.Kind == kindLink && (!last || followLast) {
			if links++; links > 40 {
				return where{}, fmt.Errorf("%w: too many levels of symbolic links in %s", runtime.ErrInvalidPath, p)
			}
			if strings.HasPrefix(child.Target, "/") {
				stack, names = stack[:1], names[:0]
			}
			comps = append(split(child.Target), comps...)
			if len(comps) == 0 { // a link to "/"
				return where{n: t.Root, abs: "/"}, nil
			}
			continue
		}
		if last {
			return where{dir: cur, name: c, n: child, abs: "/" + path.Join(append(names, c)...)}, nil
		}
		stack, names = append(stack, child), append(names, c)
	}
	// Only a path ending in a link to a directory that was followed gets
	// here; the loop returns in every other case.
	return where{n: stack[len(stack)-1], abs: "/" + strings.Join(names, "/")}, nil
}

// mkdirAll makes p and its missing parents, following links; a
// non-directory (or a dangling link) in the way is ErrNotDir.
func (t *tree) mkdirAll(p string, mode uint32, uid uint32, made func(abs string)) (*node, string, error) {
	if mode == 0 {
		mode = 0o755
	}
	cur, abs := t.Root, "/"
	for _, c := range split(p) {
		if c == ".." {
			return nil, "", fmt.Errorf("%w: %s", runtime.ErrInvalidPath, p)
		}
		el := path.Join(abs, c)
		lw, err := t.resolve(el, false)
		if err != nil {
			return nil, "", err
		}
		switch {
		case lw.n == nil:
			d := newDir(mode)
			d.UID = uid
			lw.dir.Children[lw.name] = d
			lw.dir.Modified = time.Now().UTC()
			if made != nil {
				made(lw.abs)
			}
			cur, abs = d, lw.abs
		case lw.n.Kind == kindLink:
			fw, err := t.resolve(el, true)
			if err != nil || fw.n == nil || fw.n.Kind != kindDir {
				return nil, "", fmt.Errorf("%w: %s is a link to no directory", runtime.ErrNotDir, el)
			}
			cur, abs = fw.n, fw.abs
		case lw.n.Kind != kindDir:
			return nil, "", fmt.Errorf("%w: %s", runtime.ErrNotDir, el)
		default:
			cur, abs = lw.n, lw.abs
		}
	}
	return cur, abs, nil
}

// walkFollow resolves p following every link, and returns ErrFileNotFound
// for a dangling one.
func (t *tree) walkFollow(p string) (where, error) {
	w, err := t.resolve(p, true)
	if err != nil {
		return w, err
	}
	if w.n == nil {
		return w, fmt.Errorf("%w: %s", runtime.ErrFileNotFound, p)
	}
	return w, nil
}

func (n *node) size() int64 {
	switch n.Kind {
	case kindFile:
		return int64(len(n.Data))
	case kindLink:
		return int64(len(n.Target))
	}
	return 4096
}

func fileInfo(name, p string, n *node) runtime.FileInfo {
	return runtime.FileInfo{
		Name: name, Path: p, IsDir: n.Kind == kindDir, Size: n.size(), Mode: n.Mode & 0o777,
		Modified: n.Modified, Symlink: n.Kind == kindLink,
	}
}

func (n *node) typ() string {
	switch n.Kind {
	case kindDir:
		return "dir"
	case kindLink:
		return "symlink"
	}
	return "file"
}

func statOf(name, p string, n *node) runtime.Stat {
	owner := runtime.UserRoot
	if n.UID == userUID {
		owner = runtime.UserUser
	}
	return runtime.Stat{
		Exists: true, Name: name, Path: p, Type: n.typ(), Size: n.size(), Mode: n.Mode, UID: n.UID, GID: n.UID,
		Owner: owner, Group: owner, Accessed: n.Modified, Modified: n.Modified, Changed: n.Modified, Target: n.Target,
	}
}

// userUID is the uid of runtime.UserUser; root's is 0.
const userUID = 1000

// uidOf maps a call's user to its uid.
func uidOf(user string) (uint32, error) {
	switch user {
	case "", runtime.UserRoot:
		return 0, nil
	case runtime.UserUser:
		return userUID, nil
	}
	return 0, fmt.Errorf("%w: %q", runtime.ErrNoUser, user)
}

// mayWrite says whether uid may create and remove entries in dir (the
// owner's and others' write bits; root may always).
func mayWrite(dir *node, uid uint32) bool {
	return uid == 0 || dir.UID == uid && dir.Mode&0o200 != 0 || dir.Mode&0o002 != 0
}

// mayRead says whether uid may read n.
func mayRead(n *node, uid uint32) bool {
	return uid == 0 || n.UID == uid && n.Mode&0o400 != 0 || n.Mode&0o004 != 0
}

// deepestDir is the deepest directory that exists on the way to p
// (links followed).
func (t *tree) deepestDir(p string) *node {
	comps := split(p)
	for i := len(comps); i > 0; i-- {
		if w, err := t.resolve("/"+strings.Join(comps[:i], "/"), true); err == nil && w.n != nil && w.n.Kind == kindDir {
			return w.n
		}
	}
	return t.Root
}

// bytesIn counts the file contents under n.
func bytesIn(n *node) int64 {
	switch n.Kind {
	case kindFile:
		return int64(len(n.Data))
	case kindDir:
		var s int64
		for _, c := range n.Children {
			s += bytesIn(c)
		}
		return s
	}
	return 0
}

// list returns dir's entries sorted by name.
func list(dirPath string, dir *node) []runtime.FileInfo {
	names := make([]string, 0, len(dir.Children))
	for name := range dir.Children {
		names = append(names, name)
	}
	sort.Strings(names)
	out := make([]runtime.FileInfo, 0, len(names))
	for _, name := range names {
		out = append(out, fileInfo(name, path.Join(dirPath, name), dir.Children[name]))
	}
	return out
}

// clone deep-copies n (for snapshots).
func (n *node) clone() *node {
	c := *n
	if n.Data != nil {
		c.Data = append([]byte(nil), n.Data...)
	}
	if n.Children != nil {
		c.Children = make(map[string]*node, len(n.Children))
		for k, v := range n.Children {
			c.Children[k] = v.clone()
		}
	}
	return &c
}
