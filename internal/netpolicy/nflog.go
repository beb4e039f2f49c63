package netpolicy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// nflog reads the packets nftables' `log group N` statements hand to user
// space over nfnetlink_log: each is a connection attempt a sandbox was
// refused. Only the headers are copied (copy range below), never payloads.
type nflog struct {
	fd     int
	group  uint16
	closed atomic.Bool
	done   chan struct{} // closed when run returns
}

// dropEvent is one logged packet.
type dropEvent struct {
	Time   time.Time
	InDev  int    // host-side interface the packet came in on
	Prefix string // the rule's log prefix: why it was dropped
	Src    netip.Addr
	Dst    netip.Addr
	Proto  uint8
	DPort  uint16
}

const (
	nfnlSubsysULOG   = 4
	nfulnlMsgPacket  = 0
	nfulnlMsgConfig  = 1
	nfulaCfgCmd      = 1
	nfulaCfgMode     = 2
	nfulaCfgTimeout  = 4
	nfulaCfgQthresh  = 5
	nfulnlCfgBind    = 1
	nfulnlCfgUnbind  = 2
	nfulnlCopyPacket = 2
	nfulaTimestamp   = 3
	nfulaIndev       = 4
	nfulaPayload     = 9
	nfulaPrefix      = 10
	copyRange        = 96 // IPv4/IPv6 header and the ports that follow
)

func openNflog(group uint16) (*nflog, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("netpolicy: nflog socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netpolicy: nflog bind: %w", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20)
	tv := unix.NsecToTimeval(int64(300 * time.Millisecond))
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	l := &nflog{fd: fd, group: group, done: make(chan struct{})}
	be32 := func(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
	steps := []struct {
		typ  uint16
		data []byte
	}{
		{nfulaCfgCmd, []byte{nfulnlCfgBind}},
		{nfulaCfgMode, append(be32(copyRange), nfulnlCopyPacket, 0)},
		{nfulaCfgQthresh, be32(1)}, // deliver each packet at once
		{nfulaCfgTimeout, be32(0)},
	}
	for i, s := range steps {
		if err := l.config(uint32(i+1), s.typ, s.data); err != nil {
			unix.Close(fd)
			if errors.Is(err, unix.EBUSY) {
				return nil, fmt.Errorf("netpolicy: nflog group %d is taken by another process; set a different log group: %w", group, err)
			}
			return nil, fmt.Errorf("netpolicy: nflog config of group %d: %w", group, err)
		}
	}
	return l, nil
}

func nlattr(typ uint16, data []byte) []byte {
	b := binary.NativeEndian.AppendUint16(nil, uint16(4+len(data)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// config sends one NFULNL_MSG_CONFIG with a single attribute and waits for
// the kernel's acknowledgement.
func (l *nflog) config(seq uint32, attr uint16, data []byte) error {
	body := []byte{unix.AF_UNSPEC, 0, byte(l.group >> 8), byte(l.group)}
	body = append(body, nlattr(attr, data)...)
	msg := binary.NativeEndian.AppendUint32(nil, uint32(16+len(body)))
	msg = binary.NativeEndian.AppendUint16(msg, nfnlSubsysULOG<<8|nfulnlMsgConfig)
	msg = binary.NativeEndian.AppendUint16(msg, unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	msg = binary.NativeEndian.AppendUint32(msg, seq)
	msg = binary.NativeEndian.AppendUint32(msg, 0)
	msg = append(msg, body...)
	if err := unix.Sendto(l.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 8192)
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		n, _, err := unix.Recvfrom(l.fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Type == unix.NLMSG_ERROR && m.Header.Seq == seq && len(m.Data) >= 4 {
				if code := int32(binary.NativeEndian.Uint32(m.Data[:4])); code != 0 {
					return unix.Errno(-code)
				}
				return nil
			}
		}
	}
	return errors.New("no acknowledgement from the kernel")
}

// run delivers events to fn until close.
func (l *nflog) run(fn func(dropEvent)) {
	defer close(l.done)
	buf := make([]byte, 1<<16)
	for !l.closed.Load() {
		n, _, err := unix.Recvfrom(l.fd, buf, 0)
		if err != nil {
			// EAGAIN: the receive timeout, to look at closed again.
			// ENOBUFS: the kernel dropped log messages under a flood;
			// later ones still come.
			continue
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			continue
		}
		for _, m := range msgs {
			if m.Header.Type != nfnlSubsysULOG<<8|nfulnlMsgPacket || len(m.Data) < 4 {
				continue
			}
			if ev, ok := parsePacket(m.Data[4:]); ok {
				fn(ev)
			}
		}
	}
}

// close stops run and releases the group. The socket is closed only after
// run has returned (it wakes up at least every receive timeout), so that
// run never reads from a descriptor number reused by someone else.
func (l *nflog) close() {
	if l.closed.Swap(true) {
		return
	}
	<-l.done
	_ = l.config(1000, nfulaCfgCmd, []byte{nfulnlCfgUnbind})
	unix.Close(l.fd)
}

// parsePacket reads the attributes of one NFULNL_MSG_PACKET.
func parsePacket(b []byte) (dropEvent, bool) {
	ev := dropEvent{Time: time.Now()}
	var payload []byte
	for len(b) >= 4 {
		alen := int(binary.NativeEndian.Uint16(b[:2]))
		typ := binary.NativeEndian.Uint16(b[2:4]) & 0x3fff
		if alen < 4 || alen > len(b) {
			break
		}
		data := b[4:alen]
		switch typ {
		case nfulaIndev:
			if len(data) == 4 {
				ev.InDev = int(binary.BigEndian.Uint32(data))
			}
		case nfulaPrefix:
			for i, c := range data {
				if c == 0 {
					data = data[:i]
					break
				}
			}
			ev.Prefix = string(data)
		case nfulaPayload:
			payload = data
		case nfulaTimestamp:
			if len(data) == 16 {
				sec := int64(binary.BigEndian.Uint64(data[:8]))
				usec := int64(binary.BigEndian.Uint64(data[8:]))
				if sec > 0 {
					ev.Time = time.Unix(sec, usec*1000)
				}
			}
		}
		next := (alen + 3) &^ 3
		if next > len(b) {
			break
		}
		b = b[next:]
	}
	if len(payload) < 1 {
		return ev, false
	}
	switch payload[0] >> 4 {
	case 4:
		if len(payload) < 20 {
			return ev, false
		}
		ihl := int(payload[0]&0x0f) * 4
		ev.Proto = payload[9]
		ev.Src = netip.AddrFrom4([4]byte(payload[12:16]))
		ev.Dst = netip.AddrFrom4([4]byte(payload[16:20]))
		if (ev.Proto == unix.IPPROTO_TCP || ev.Proto == unix.IPPROTO_UDP) && len(payload) >= ihl+4 {
			ev.DPort = binary.BigEndian.Uint16(payload[ihl+2 : ihl+4])
		}
	case 6:
		if len(payload) < 40 {
			return ev, false
		}
		ev.Proto = payload[6]
		ev.Src = netip.AddrFrom16([16]byte(payload[8:24]))
		ev.Dst = netip.AddrFrom16([16]byte(payload[24:40]))
		if (ev.Proto == unix.IPPROTO_TCP || ev.Proto == unix.IPPROTO_UDP) && len(payload) >= 44 {
			ev.DPort = binary.BigEndian.Uint16(payload[42:44])
		}
	default:
		return ev, false
	}
	return ev, true
}
