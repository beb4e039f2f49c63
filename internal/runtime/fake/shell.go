package fake

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// seg is a piece of a word: literal text, or a variable expanded when the
// command runs ($NAME, ${NAME}, $$, $?).
type seg struct {
	Lit   string
	Var   string
	IsVar bool
}

// word is one word of a command, before expansion.
type word []seg

// simple is one simple command: its words and where its standard output
// goes (StdoutTo "&2": stderr; else a file named by File).
type simple struct {
	Args     []word
	StdoutTo string
	File     word
}

var errSyntax = errors.New("syntax error")

// parse splits a script into simple commands. It knows `;`, newlines,
// quotes, backslashes, comments, $NAME, ${NAME}, $$, $? and the
// redirections `>&2` and `> FILE`: the basic vocabulary of the conformance
// suite (package runtimetest), and little more.
func parse(script string) ([]simple, error) {
	var cmds []simple
	var cur simple
	var w word
	var lit strings.Builder
	inWord, redirect := false, false
	flush := func() {
		if lit.Len() > 0 {
			w = append(w, seg{Lit: lit.String()})
			lit.Reset()
		}
	}
	endWord := func() {
		if !inWord {
			return
		}
		flush()
		if redirect {
			cur.StdoutTo, cur.File = "file", w
			redirect = false
		} else {
			cur.Args = append(cur.Args, w)
		}
		w = nil
		inWord = false
	}
	endCmd := func() {
		endWord()
		if len(cur.Args) > 0 {
			cmds = append(cmds, cur)
		}
		cur = simple{}
	}
	expand := func(i int) int { // script[i] == '$'; returns the next index
		rest := script[i+1:]
		name, next := "", i+1
		switch {
		case strings.HasPrefix(rest, "$"), strings.HasPrefix(rest, "?"):
			name, next = rest[:1], i+2
		case strings.HasPrefix(rest, "{"):
			end := strings.IndexByte(rest, '}')
			if end < 0 {
				return -1
			}
			name, next = rest[1:end], i+2+end
		default:
			n := 0
			for n < len(rest) && (rest[n] == '_' || rest[n] >= 'a' && rest[n] <= 'z' || rest[n] >= 'A' && rest[n] <= 'Z' || n > 0 && rest[n] >= '0' && rest[n] <= '9') {
				n++
			}
			if n == 0 {
				lit.WriteByte('$')
				return i + 1
			}
			name, next = rest[:n], i+1+n
		}
		flush()
		w = append(w, seg{Var: name, IsVar: true})
		return next
	}
	for i := 0; i < len(script); {
		c := script[i]
		switch {
		case c == ' ' || c == '\t':
			endWord()
			i++
		case c == ';' || c == '\n':
			if redirect && !inWord {
				return nil, errSyntax
			}
			endCmd()
			i++
		case c == '#' && !inWord:
			for i < len(script) && script[i] != '\n' {
				i++
			}
		case c == '>':
			endWord()
			if redirect {
				return nil, errSyntax
			}
			if strings.HasPrefix(script[i:], ">&2") {
				cur.StdoutTo = "&2"
				i += 3
				continue
			}
			redirect = true
			i++
		case c == '\\':
			if i+1 < len(script) {
				if script[i+1] != '\n' {
					lit.WriteByte(script[i+1])
					inWord = true
				}
				i += 2
				continue
			}
			i++
		case c == '\'':
			end := strings.IndexByte(script[i+1:], '\'')
			if end < 0 {
				return nil, errSyntax
			}
			lit.WriteString(script[i+1 : i+1+end])
			inWord = true
			i += end + 2
		case c == '"':
			inWord = true
			i++
			for {
				if i >= len(script) {
					return nil, errSyntax
				}
				d := script[i]
				if d == '"' {
					i++
					break
				}
				if d == '\\' && i+1 < len(script) && strings.IndexByte("\\\"$`\n", script[i+1]) >= 0 {
					if script[i+1] != '\n' {
						lit.WriteByte(script[i+1])
					}
					i += 2
					continue
				}
				if d == '$' {
					if i = expand(i); i < 0 {
						return nil, errSyntax
					}
					continue
				}
				lit.WriteByte(d)
				i++
			}
		case c == '$':
			inWord = true
			if i = expand(i); i < 0 {
				return nil, errSyntax
			}
		default:
			lit.WriteByte(c)
			inWord = true
			i++
		}
	}
	if redirect && !inWord {
		return nil, errSyntax
	}
	endCmd()
	return cmds, nil
}

// expand is w with its variables' values.
func (sh *shell) expand(w word) string {
	var b strings.Builder
	for _, s := range w {
		switch {
		case !s.IsVar:
			b.WriteString(s.Lit)
		case s.Var == "$":
			b.WriteString("1")
		case s.Var == "?":
			b.WriteString(strconv.Itoa(sh.last))
		default:
			b.WriteString(sh.vars[s.Var])
		}
	}
	return b.String()
}

// assignment splits NAME=value.
func assignment(arg string) (name, value string, ok bool) {
	i := strings.IndexByte(arg, '=')
	if i <= 0 {
		return "", "", false
	}
	for j, c := range arg[:i] {
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || j > 0 && c >= '0' && c <= '9') {
			return "", "", false
		}
	}
	return arg[:i], arg[i+1:], true
}

// status is how a script or one command ended.
type status struct {
	Code   int
	Signal int
	OOM    bool
}

// shell runs parsed commands against a sandbox's files.
type shell struct {
	sb     *Sandbox
	uid    uint32 // whose the files it makes are
	cwd    string
	vars   map[string]string // the environment and the script's variables
	last   int               // $?
	exited bool              // the script ran exit
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	// killed is closed when the command must end; sig says with which
	// signal.
	killed <-chan struct{}
	sig    func() int
}

// run runs cmds from index from; step is told which command starts. The
// status is that of the last command run; a kill ends the script at once.
func (sh *shell) run(cmds []simple, from int, step func(int)) status {
	st := status{}
	for i := from; i < len(cmds); i++ {
		if step != nil {
			step(i)
		}
		if sh.isKilled() {
			return sh.killStatus()
		}
		c := cmds[i]
		args := make([]string, 0, len(c.Args))
		for _, w := range c.Args {
			args = append(args, sh.expand(w))
		}
		// Leading NAME=value words set variables of the script.
		for len(args) > 0 {
			name, value, ok := assignment(args[0])
			if !ok {
				break
			}
			sh.vars[name] = value
			args = args[1:]
		}
		if len(args) == 0 {
			st = status{}
			sh.last = 0
			continue
		}
		out := sh.stdout
		var file *bytes.Buffer
		switch c.StdoutTo {
		case "":
		case "&2":
			out = sh.stderr
		default:
			file = &bytes.Buffer{}
			out = file
		}
		var exit bool
		st, exit = sh.builtin(args, out)
		if sh.isKilled() {
			return sh.killStatus()
		}
		if file != nil {
			name := sh.expand(c.File)
			if err := sh.sb.writeShellFile(sh.abs(name), file.Bytes(), sh.uid); err != nil {
				fmt.Fprintf(sh.stderr, "sh: 1: cannot create %s: %v\n", name, err)
				st = status{Code: 2}
			}
		}
		sh.last = st.Code
		if exit || st.Signal != 0 {
			sh.exited = sh.exited || exit
			return st
		}
	}
	return st
}

func (sh *shell) isKilled() bool {
	select {
	case <-sh.killed:
		return true
	default:
		return false
	}
}

func (sh *shell) killStatus() status {
	s := sh.sig()
	return status{Code: 128 + s, Signal: s}
}

func (sh *shell) abs(p string) string {
	if strings.HasPrefix(p, "/") {
		return p
	}
	return path.Join(sh.cwd, p)
}

// builtin runs one command; exit says the script ends with it.
func (sh *shell) builtin(args []string, out io.Writer) (st status, exit bool) {
	switch args[0] {
	case "true", ":":
		return status{}, false
	case "false":
		return status{Code: 1}, false
	case "exit":
		code := 0
		if len(args) > 1 {
			n, err := strconv.Atoi(args[1])
			if err != nil {
				fmt.Fprintf(sh.stderr, "sh: 1: exit: Illegal number: %s\n", args[1])
				return status{Code: 2}, true
			}
			code = n & 0xff
		}
		return status{Code: code}, true
	case "echo":
		a := args[1:]
		nl := "\n"
		if len(a) > 0 && a[0] == "-n" {
			a, nl = a[1:], ""
		}
		_, _ = io.WriteString(out, strings.Join(a, " ")+nl)
		return status{}, false
	case "printf":
		if len(args) < 2 {
			fmt.Fprintln(sh.stderr, "printf: usage: printf format [arg ...]")
			return status{Code: 2}, false
		}
		_, _ = io.WriteString(out, printf(args[1], args[2:]))
		return status{}, false
	case "read":
		// read [-r] NAME: one line of stdin, without its newline.
		a := args[1:]
		if len(a) > 0 && a[0] == "-r" {
			a = a[1:]
		}
		if len(a) != 1 {
			fmt.Fprintln(sh.stderr, "read: only read [-r] NAME is known to the fake driver")
			return status{Code: 2}, false
		}
		line, err := readLine(sh.stdin)
		sh.vars[a[0]] = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
		if sh.isKilled() {
			return sh.killStatus(), true
		}
		if err != nil && line == "" {
			return status{Code: 1}, false
		}
		return status{}, false
	case "pwd":
		_, _ = io.WriteString(out, sh.cwd+"\n")
		return status{}, false
	case "sleep":
		if len(args) != 2 {
			fmt.Fprintln(sh.stderr, "sleep: missing operand")
			return status{Code: 1}, false
		}
		secs, err := strconv.ParseFloat(args[1], 64)
		if err != nil || secs < 0 {
			fmt.Fprintf(sh.stderr, "sleep: invalid time interval '%s'\n", args[1])
			return status{Code: 1}, false
		}
		t := time.NewTimer(time.Duration(secs * float64(time.Second)))
		defer t.Stop()
		select {
		case <-t.C:
			return status{}, false
		case <-sh.killed:
			return sh.killStatus(), true
		}
	case "cat":
		if len(args) == 1 {
			if _, err := io.Copy(out, sh.stdin); err != nil && sh.isKilled() {
				return sh.killStatus(), true
			}
			return status{}, false
		}
		st := status{}
		for _, f := range args[1:] {
			data, err := sh.sb.readShellFile(sh.abs(f))
			if err != nil {
				fmt.Fprintf(sh.stderr, "cat: %s: %v\n", f, err)
				st.Code = 1
				continue
			}
			_, _ = out.Write(data)
		}
		return st, false
	case "ln":
		if len(args) != 4 || args[1] != "-s" {
			fmt.Fprintln(sh.stderr, "ln: only ln -s TARGET LINK is known to the fake driver")
			return status{Code: 1}, false
		}
		if err := sh.sb.symlink(args[2], sh.abs(args[3]), sh.uid); err != nil {
			fmt.Fprintf(sh.stderr, "ln: failed to create symbolic link '%s': %v\n", args[3], err)
			return status{Code: 1}, false
		}
		return status{}, false
	case "oom":
		// A process the sandbox's memory limit killed (a fault tests
		// inject with a command).
		sh.sb.countOOM()
		return status{Code: 128 + int(syscall.SIGKILL), Signal: int(syscall.SIGKILL), OOM: true}, true
	}
	fmt.Fprintf(sh.stderr, "sh: 1: %s: not found\n", args[0])
	return status{Code: 127}, false
}

// printf formats like the shell's printf with %s, %d, %% and the escapes
// \n, \t, \r, \\ and \"; the format is reused while arguments remain.
func printf(format string, args []string) string {
	var b strings.Builder
	for {
		used := 0
		for i := 0; i < len(format); i++ {
			c := format[i]
			switch {
			case c == '\\' && i+1 < len(format):
				i++
				switch format[i] {
				case 'n':
					b.WriteByte('\n')
				case 't':
					b.WriteByte('\t')
				case 'r':
					b.WriteByte('\r')
				case '\\':
					b.WriteByte('\\')
				case '"':
					b.WriteByte('"')
				default:
					b.WriteByte('\\')
					b.WriteByte(format[i])
				}
			case c == '%' && i+1 < len(format):
				i++
				arg := ""
				if format[i] != '%' && used < len(args) {
					arg = args[used]
				}
				switch format[i] {
				case '%':
					b.WriteByte('%')
				case 's':
					b.WriteString(arg)
					used++
				case 'd':
					n, _ := strconv.Atoi(arg)
					b.WriteString(strconv.Itoa(n))
					used++
				default:
					b.WriteByte('%')
					b.WriteByte(format[i])
				}
			default:
				b.WriteByte(c)
			}
		}
		args = args[min(used, len(args)):]
		if used == 0 || len(args) == 0 {
			return b.String()
		}
	}
}

// readLine reads up to a newline one byte at a time, so nothing after it is
// taken from the input.
func readLine(r io.Reader) (string, error) {
	var b strings.Builder
	one := make([]byte, 1)
	for {
		n, err := r.Read(one)
		if n == 1 {
			b.WriteByte(one[0])
			if one[0] == '\n' {
				return b.String(), nil
			}
		}
		if err != nil {
			return b.String(), err
		}
	}
}
