package gvisor

import (
	"sync"

	"golang.org/x/sys/unix"
)

// exitWatcher tells when processes exit, using one epoll set of pidfds for
// all of them rather than a blocked thread per sandbox. The processes need
// not be our children (runsc daemonizes the sandbox).
type exitWatcher struct {
	once  sync.Once
	epfd  int
	err   error
	mu    sync.Mutex
	funcs map[int32]func() // by pidfd
}

var watcher exitWatcher

func (w *exitWatcher) init() error {
	w.once.Do(func() {
		w.epfd, w.err = unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if w.err != nil {
			return
		}
		w.funcs = map[int32]func(){}
		go w.loop()
	})
	return w.err
}

// watch calls fn once when pid exits (at once if it already has). The
// returned cancel stops watching without calling fn.
func (w *exitWatcher) watch(pid int, fn func()) (cancel func(), err error) {
	if err := w.init(); err != nil {
		return nil, err
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if err == unix.ESRCH {
			go fn()
			return func() {}, nil
		}
		return nil, err
	}
	w.mu.Lock()
	w.funcs[int32(fd)] = fn
	w.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLONESHOT, Fd: int32(fd)}
	if err := unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		w.mu.Lock()
		delete(w.funcs, int32(fd))
		w.mu.Unlock()
		unix.Close(fd)
		return nil, err
	}
	return func() {
		w.mu.Lock()
		_, ok := w.funcs[int32(fd)]
		delete(w.funcs, int32(fd))
		w.mu.Unlock()
		if ok {
			_ = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_DEL, fd, nil)
			unix.Close(fd)
		}
	}, nil
}

func (w *exitWatcher) loop() {
	events := make([]unix.EpollEvent, 64)
	for {
		n, err := unix.EpollWait(w.epfd, events, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return
		}
		for _, ev := range events[:n] {
			w.mu.Lock()
			fn, ok := w.funcs[ev.Fd]
			delete(w.funcs, ev.Fd)
			w.mu.Unlock()
			if ok {
				_ = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_DEL, int(ev.Fd), nil)
				unix.Close(int(ev.Fd))
				go fn()
			}
		}
	}
}
