package client

import (
	"net"

	"golang.org/x/sys/unix"
)

// setSocketBuffers raises the send and receive buffers of the host's end
// of the channel past the sysctl caps (net.core.wmem_max is 208 KiB by
// default; orkestrd runs as root, so SO_*BUFFORCE is allowed), falling
// back to the capped sizes. A larger buffer lets the agent, whose every
// read is a trapped syscall, take more per read.
func setSocketBuffers(conn *net.UnixConn, n int) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return
	}
	forced := false
	_ = rc.Control(func(fd uintptr) {
		e1 := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, n)
		e2 := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n)
		forced = e1 == nil && e2 == nil
	})
	if !forced {
		_ = conn.SetWriteBuffer(n)
		_ = conn.SetReadBuffer(n)
	}
}
