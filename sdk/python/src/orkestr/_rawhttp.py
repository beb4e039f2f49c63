"""One HTTP/1.1 exchange on a socket of its own, for the exec stream from an
http:// API. httpx (h11 underneath) reads 64 KiB at a time into fresh bytes
and copies every piece through its parser's buffer: about 1 s of CPU per GB
of output. Reading the body with ``recv_into`` into one reused buffer of
1 MiB and copying each read out once costs 0.4-0.5 s (docs/benchmarks.md).

Errors are httpx's own exception types, so callers map them as they map
httpx's."""

from __future__ import annotations

import socket
from typing import Dict, Iterator, List, Optional, Tuple, Union
from urllib.parse import urlsplit

import httpx

# What a read of a chunk's data may take beyond it: its CRLF and a size
# line of up to 8 hex digits with its CRLF.
CHUNK_SLACK = 12

# A piece of a body: bytes, or a view of the read buffer (iter_views).
Piece = Union[bytes, memoryview]

READ_BUFFER = 1 << 20
MAX_HEAD = 64 << 10
MAX_LINE = 4096


class RawResponse:
    """A 2xx or error answer whose body is read with iter_bytes."""

    def __init__(self, sock: socket.socket, status: int, headers: httpx.Headers, rest: bytes) -> None:
        self._sock: Optional[socket.socket] = sock
        self.status_code = status
        self.headers = headers
        self._pending = rest  # body bytes read with the head
        self._buf = bytearray(READ_BUFFER)
        self._view = memoryview(self._buf)

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def read_at_most(self, limit: int) -> bytes:
        """The body, or its first limit bytes (an error answer's)."""
        out: List[bytes] = []
        n = 0
        try:
            for b in self.iter_bytes():
                out.append(b)
                n += len(b)
                if n >= limit:
                    break
        except httpx.TransportError:
            pass  # the status still says what happened
        return b"".join(out)[:limit]

    def iter_lines(self) -> Iterator[str]:
        # Split before decoding: a character may be cut between two reads.
        rest = b""
        for b in self.iter_bytes():
            *lines, rest = (rest + b).split(b"\n")
            for line in lines:
                yield line.rstrip(b"\r").decode("utf-8", "replace")
        if rest:
            yield rest.decode("utf-8", "replace")

    def iter_bytes(self) -> Iterator[bytes]:
        for p in self._body(copy=True):
            assert isinstance(p, bytes)
            yield p

    def iter_views(self) -> Iterator[Piece]:
        """The body as iter_bytes gives it, except that what comes off the
        socket comes as views of the read buffer, valid only until the next
        piece is asked for: for a reader that copies what it keeps (the
        frame decoder), which saves a copy of every byte into fresh memory
        (page faults were most of a stream's client CPU)."""
        return self._body(copy=False)

    def _body(self, copy: bool) -> Iterator[Piece]:
        te = self.headers.get("transfer-encoding", "").lower()
        cl = self.headers.get("content-length")
        if self.status_code in (204, 304):
            pass  # no body, whatever the headers say
        elif "chunked" in te:
            yield from self._chunked(copy)
        elif cl is not None:
            if not cl.isdigit() or len(cl) > 15:
                raise httpx.RemoteProtocolError(f"a Content-Length of {cl[:20]!r}")
            yield from self._exactly(int(cl), copy)
        else:
            yield from self._to_close(copy)
        self.close()

    def _recv_into(self, n: int) -> int:
        if self._sock is None:
            raise httpx.ReadError("the answer was closed")
        try:
            return self._sock.recv_into(self._view[:n])
        except socket.timeout:
            raise httpx.ReadTimeout("no answer within the timeout") from None
        except OSError as e:
            raise httpx.ReadError(str(e)) from None

    def _exactly(self, left: int, copy: bool, slack: int = 0) -> Iterator[Piece]:
        """The next left bytes of the body, as they arrive. With slack, each
        read may take up to that many bytes more, kept for what follows (in
        a chunked body: the CRLF and the next chunk's size line, which
        otherwise cost a read of their own per chunk)."""
        if self._pending:
            take = self._pending[:left]
            self._pending = self._pending[left:]
            left -= len(take)
            yield take
        while left > 0:
            k = self._recv_into(min(left + slack, READ_BUFFER))
            if k == 0:
                raise httpx.RemoteProtocolError("the connection closed before the answer ended")
            if k > left:
                self._pending += self._view[left:k].tobytes()
                k = left
            left -= k
            yield self._view[:k].tobytes() if copy else self._view[:k]

    def _to_close(self, copy: bool) -> Iterator[Piece]:
        if self._pending:
            b, self._pending = self._pending, b""
            yield b
        while True:
            k = self._recv_into(READ_BUFFER)
            if k == 0:
                return
            yield self._view[:k].tobytes() if copy else self._view[:k]

    def _line(self) -> bytes:
        while b"\n" not in self._pending:
            if len(self._pending) > MAX_LINE:
                raise httpx.RemoteProtocolError("a chunk line over 4 KiB")
            k = self._recv_into(MAX_LINE)
            if k == 0:
                raise httpx.RemoteProtocolError("the connection closed before the answer ended")
            self._pending += self._view[:k].tobytes()
        line, _, self._pending = self._pending.partition(b"\n")
        return line.rstrip(b"\r")

    def _chunked(self, copy: bool) -> Iterator[Piece]:
        while True:
            size = self._line().split(b";", 1)[0].strip()
            if not size or len(size) > 8 or any(c not in b"0123456789abcdefABCDEF" for c in size):
                raise httpx.RemoteProtocolError(f"a chunk size of {size[:20]!r}")
            n = int(size, 16)
            if n == 0:
                while self._line() != b"":  # trailers, up to the empty line
                    pass
                return
            yield from self._exactly(n, copy, CHUNK_SLACK)
            if self._line() != b"":
                raise httpx.RemoteProtocolError("a chunk not followed by CRLF")


def open_stream(url: str, method: str, headers: Dict[str, str], body: bytes,
                connect_timeout: float, read_timeout: float) -> RawResponse:
    """Send the request and read the answer's head."""
    u = urlsplit(url)
    host = u.hostname or ""
    port = u.port or 80
    path = (u.path or "/") + ("?" + u.query if u.query else "")
    try:
        sock = socket.create_connection((host, port), timeout=connect_timeout)
    except socket.timeout:
        raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
    except OSError as e:
        raise httpx.ConnectError(str(e)) from None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(read_timeout)
        # Not "Connection: close": a server that closes first while a request
        # body it did not read waits in its socket resets the connection, and
        # the reset drops the end of the answer. This socket is closed once
        # the body is read.
        head = f"{method} {path} HTTP/1.1\r\nHost: {u.netloc.rpartition('@')[2]}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head += f"Content-Length: {len(body)}\r\n\r\n"
        sock.sendall(head.encode("latin-1") + body)
        status, hdrs, rest = _read_head(sock)
    except socket.timeout:
        sock.close()
        raise httpx.ReadTimeout("no answer within the timeout") from None
    except OSError as e:
        sock.close()
        raise httpx.ReadError(str(e)) from None
    except BaseException:
        sock.close()
        raise
    return RawResponse(sock, status, hdrs, rest)


def _read_head(sock: socket.socket) -> Tuple[int, httpx.Headers, bytes]:
    got = b""
    while True:
        end = got.find(b"\r\n\r\n")
        if end >= 0:
            break
        if len(got) > MAX_HEAD:
            raise httpx.RemoteProtocolError(f"an answer head over {MAX_HEAD} bytes")
        b = sock.recv(65536)
        if not b:
            raise httpx.RemoteProtocolError("the connection closed before the answer's head")
        got += b
    lines = got[:end].decode("latin-1").split("\r\n")
    first = lines[0].split(" ", 2)
    if len(first) < 2 or first[0] not in ("HTTP/1.1", "HTTP/1.0") or not (first[1].isdigit() and len(first[1]) == 3):
        raise httpx.RemoteProtocolError(f"not an HTTP/1.1 answer: {lines[0][:40]!r}")
    pairs: List[Tuple[str, str]] = []
    for line in lines[1:]:
        k, sep, v = line.partition(":")
        if sep and k.strip():
            pairs.append((k.strip(), v.strip()))
    return int(first[1]), httpx.Headers(pairs), got[end + 4:]
