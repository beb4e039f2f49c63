package agent

import (
	"errors"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// outputPipe is the agent's end of an exec's stdout or stderr pipe, read
// with poll(2) instead of Go's netpoller.
//
// Go registers every pipe it opens with its epoll instance, edge-triggered.
// Inside gVisor each write the command makes into the pipe then re-arms the
// edge and wakes the agent's netpoller thread, even while the pump is
// sleeping to let bulk output gather (see linger): for `head -c` that
// is one wakeup — several trapped syscalls — per 8 KiB written, which cost
// the sandbox more CPU than the command itself. A pipe outside the netpoller
// wakes the agent only when it waits for it.
type outputPipe struct {
	fd   int
	stop *pipeStop
	// drained counts what was read after the stop: at most pipeSize, so a
	// background process that keeps writing cannot hold the exec open.
	drained int
	// lateWaits counts the waits for a pipe's end after the stop (see
	// Read).
	lateWaits int
}

// errOutputStopped is returned once the stop was given and the pipe holds
// nothing more (or a pipe's worth was taken since).
var errOutputStopped = errors.New("output collection stopped")

// newOutputPipe takes over f: its descriptor is duplicated and f closed,
// which takes it out of Go's epoll set.
func newOutputPipe(f *os.File, stop *pipeStop) (*outputPipe, error) {
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd := -1
	cerr := rc.Control(func(orig uintptr) {
		fd, err = unix.FcntlInt(orig, unix.F_DUPFD_CLOEXEC, 0)
	})
	if cerr != nil {
		return nil, cerr
	}
	if err != nil {
		return nil, err
	}
	// O_NONBLOCK is shared with f's description (Go set it); poll waits.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &outputPipe{fd: fd, stop: stop}, nil
}

// Read reads what the pipe holds, waiting for output until the writers
// close it (io.EOF) or the stop is given (errOutputStopped once drained).
func (p *outputPipe) Read(buf []byte) (int, error) {
	for {
		if n, err := p.readReady(buf); n > 0 || err != nil {
			return n, err
		}
		if p.stop.given() {
			// Under load gVisor can deliver a command's last output (and
			// the end of its pipe) well after it reported its exit. The
			// grace is for children still holding the pipe; with none,
			// the pipe's end is waited for, within bounds.
			if p.lateWaits >= maxLateWaits || writerElsewhere(p.fd) {
				return 0, errOutputStopped
			}
			p.lateWaits++
			fds := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}}
			if _, err := unix.Poll(fds, int(lateWait/time.Millisecond)); err != nil && err != unix.EINTR {
				return 0, err
			}
			continue
		}
		fds := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}, {Fd: int32(p.stop.r), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, -1); err != nil && err != unix.EINTR {
			return 0, err
		}
	}
}

// gather waits for output and returns the next frame's worth, read into
// buf, with the error that ended the pipe, if any (see bulkRead).
func (p *outputPipe) gather(buf []byte) ([]byte, error) {
	n, err := p.Read(buf)
	if err != nil || n < bulkRead {
		return buf[:n], err
	}
	deadline := time.Now().Add(gatherMax)
	for wait := gatherPoll; n < gatherFor && !p.stop.given(); {
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		time.Sleep(min(wait, left))
		m, err := p.readReady(buf[n:])
		n += m
		if err != nil {
			return buf[:n], err
		}
		if m == 0 {
			wait *= 2
		} else {
			wait = gatherPoll
		}
	}
	return buf[:n], nil
}

// readReady reads what the pipe holds now, without waiting: 0 and no error
// when it holds nothing, io.EOF when its writers closed it.
func (p *outputPipe) readReady(buf []byte) (int, error) {
	for {
		n, err := unix.Read(p.fd, buf)
		switch {
		case n > 0:
			if p.stop.given() {
				p.drained += n
			}
			return n, nil
		case err == nil:
			return 0, io.EOF
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return 0, nil
		}
		return 0, err
	}
}

// full reports whether a pipe's worth was taken after the stop.
func (p *outputPipe) full() bool { return p.drained >= pipeSize }

// Close closes the pipe; a second Close does nothing.
func (p *outputPipe) Close() error {
	if p.fd < 0 {
		return nil
	}
	fd := p.fd
	p.fd = -1
	return unix.Close(fd)
}

// After the stop, a pipe that no process can write to any more is waited
// for lateWait at a time, maxLateWaits times at most.
const (
	lateWait     = 100 * time.Millisecond
	maxLateWaits = 30
)

// writerElsewhere reports whether any process holds the pipe fd reads
// from open for writing (or whether that is unknown). The agent holds only
// read ends of its commands' pipes. It reads /proc, so it is only asked
// once the stop was given.
func writerElsewhere(fd int) bool {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return true
	}
	link := "pipe:[" + strconv.FormatUint(st.Ino, 10) + "]"
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return true
	}
	for _, pe := range procs {
		pid := pe.Name()
		if pid[0] < '0' || pid[0] > '9' {
			continue
		}
		fds, _ := os.ReadDir("/proc/" + pid + "/fd")
		for _, f := range fds {
			if l, _ := os.Readlink("/proc/" + pid + "/fd/" + f.Name()); l != link {
				continue
			}
			info, err := os.ReadFile("/proc/" + pid + "/fdinfo/" + f.Name())
			if err != nil || openForWriting(info) {
				return true
			}
		}
	}
	return false
}

// openForWriting reads the access mode from a /proc/<pid>/fdinfo file.
func openForWriting(fdinfo []byte) bool {
	for _, line := range strings.Split(string(fdinfo), "\n") {
		if v, ok := strings.CutPrefix(line, "flags:"); ok {
			flags, err := strconv.ParseUint(strings.TrimSpace(v), 8, 64)
			return err != nil || flags&unix.O_ACCMODE != unix.O_RDONLY
		}
	}
	return true
}

// growPipe asks for pipeSize on the pipe f is an end of, before anything
// can write to it: gVisor refuses to shrink a pipe below what it holds,
// and a command racing the resize could see its pipe change size under it.
func growPipe(f *os.File) {
	if rc, err := f.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { _, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, pipeSize) })
	}
}

// pipeStop tells the pumps of one exec to stop waiting for output: closing
// its write end makes the read end readable for every poll at once.
type pipeStop struct {
	r, w int
	once sync.Once
	done atomic.Bool
}

func newPipeStop() (*pipeStop, error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, err
	}
	return &pipeStop{r: fds[0], w: fds[1]}, nil
}

func (s *pipeStop) give() {
	s.once.Do(func() {
		s.done.Store(true) // before the close wakes the polls
		unix.Close(s.w)
	})
}

func (s *pipeStop) given() bool { return s.done.Load() }

// close releases the stop once no pump uses it.
func (s *pipeStop) close() {
	s.give()
	unix.Close(s.r)
}
