package agent

import (
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// outputPipe is the agent's end of an exec's stdout or stderr pipe, read
// with poll(2) instead of Go's netpoller.
//
// Go registers every pipe it opens with its epoll instance, edge-triggered.
// Inside gVisor each write the command makes into the pipe then re-arms the
// edge and wakes the agent's netpoller thread, even while the pump is
// sleeping to let bulk output gather (see outputLinger): for `head -c` that
// is one wakeup — several trapped syscalls — per 8 KiB written, which cost
// the sandbox more CPU than the command itself. A pipe outside the netpoller
// wakes the agent only when it waits for it.
type outputPipe struct {
	fd   int
	stop *pipeStop
	// drained counts what was read after the stop: at most pipeSize, so a
	// background process that keeps writing cannot hold the exec open.
	drained int
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
		_, _ = unix.FcntlInt(orig, unix.F_SETPIPE_SZ, pipeSize)
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
		case err != unix.EAGAIN:
			return 0, err
		}
		if p.stop.given() {
			return 0, errOutputStopped
		}
		fds := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}, {Fd: int32(p.stop.r), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, -1); err != nil && err != unix.EINTR {
			return 0, err
		}
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
