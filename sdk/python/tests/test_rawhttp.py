"""The exec stream's own HTTP/1.1 client (orkestr._rawhttp, used for http://
APIs without a proxy) against a raw TCP server that answers as a server, a
proxy or something hostile might: chunked with extensions and trailers,
Content-Length, read to the close, every answer cut into one-byte writes;
an API error; and answers that are not HTTP, heads without end, broken
chunks. Each ends in the bytes or in an OrkestrError, and never hangs."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Callable, Iterator, List, Optional, Tuple

import pytest

import orkestr
import httpx

from orkestr import OrkestrError, SandboxNotReady
from orkestr._rawhttp import open_stream

FRAMES = "application/vnd.orkestr.exec-frames"
ID = "sbx_01HXYZ0000000000000000ABCD"
SANDBOX = json.dumps({
    "id": ID, "status": "running", "template": "debian-12", "size": "small", "cpu": 0.5, "memory_mb": 512,
    "network": "off", "region": "fsn1", "timeout_seconds": 600, "expires_at": "2026-01-02T15:04:05.000Z",
    "env_keys": [], "metadata": {}, "created_at": "2026-01-02T15:04:05.000Z", "paused_at": None,
    "terminated_at": None,
}).encode()
EVERY = bytes(range(256))


def frame(typ: int, payload: bytes) -> bytes:
    return bytes([typ]) + len(payload).to_bytes(4, "big") + payload


BODY = frame(1, EVERY) + frame(2, b"err") + frame(3, b'{"type":"exit","exit_code":7,"duration_ms":1}')


def chunked(b: bytes, sizes: List[int]) -> bytes:
    out, off = b"", 0
    for n in sizes:
        k = min(n, len(b) - off)
        if k <= 0:
            break
        out += f"{k:x};ext=1\r\n".encode() + b[off:off + k] + b"\r\n"
        off += k
    if off < len(b):
        out += f"{len(b) - off:x}\r\n".encode() + b[off:] + b"\r\n"
    return out + b"0\r\nX-Trailer: t\r\n\r\n"


def ok_head(extra: str) -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Type: {FRAMES}\r\nX-Request-Id: req_raw\r\n{extra}\r\n".encode()


class StandIn:
    """A raw TCP server: a GET gets the sandbox, a POST gets answer()."""

    def __init__(self) -> None:
        self.answer: Callable[[], bytes] = lambda: b""
        self.close_after = False
        self.bytewise = True
        self.cut_at: Optional[int] = None  # send the answer in two writes 50 ms apart, cut here
        self.requests: List[Tuple[str, bytes]] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._conns: List[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        got = b""
        try:
            while True:
                d = c.recv(65536)
                if not d:
                    return
                got += d
                while b"\r\n\r\n" in got:
                    head, _, rest = got.partition(b"\r\n\r\n")
                    n = 0
                    for line in head.split(b"\r\n")[1:]:
                        k, _, v = line.partition(b":")
                        if k.strip().lower() == b"content-length":
                            n = int(v)
                    if len(rest) < n:
                        break
                    got = rest[n:]
                    if head.startswith(b"GET "):
                        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                                  + str(len(SANDBOX)).encode() + b"\r\n\r\n" + SANDBOX)
                        continue
                    self.requests.append((head.decode("latin-1"), rest[:n]))
                    wire = self.answer()
                    if self.cut_at is not None:
                        c.sendall(wire[:self.cut_at])
                        time.sleep(0.05)
                        c.sendall(wire[self.cut_at:])
                    elif self.bytewise:
                        for i in range(len(wire)):
                            c.sendall(wire[i:i + 1])
                    else:
                        c.sendall(wire)
                    if self.close_after:
                        c.shutdown(socket.SHUT_WR)
        except OSError:
            return

    def close(self) -> None:
        self.sock.close()
        for c in self._conns:
            c.close()


@pytest.fixture
def standin() -> Iterator[StandIn]:
    s = StandIn()
    yield s
    s.close()


def collect(s: StandIn) -> Tuple[bytes, bytes, Optional[BaseException], Optional[int]]:
    client = orkestr.Client(api_key="ork_test", base_url=s.url, timeout=5)
    try:
        sbx = orkestr.Sandbox.get(ID, client=client)
        out, err = b"", b""
        st = sbx.exec_stream("echo hi")
        try:
            for c in st:
                if c.stream == "stdout":
                    out += c.raw
                else:
                    err += c.raw
        except OrkestrError as e:
            return out, err, e, None
        return out, err, None, st.result.exit_code if st.result else None
    finally:
        client.close()


@pytest.mark.parametrize("name,make,close", [
    ("chunked, with chunk extensions and trailers",
     lambda: ok_head("Transfer-Encoding: chunked\r\n") + chunked(BODY, [1, 2, 3, 200, 7]), False),
    ("Content-Length", lambda: ok_head(f"Content-Length: {len(BODY)}\r\n") + BODY, False),
    ("read to the connection's close (no length)", lambda: ok_head("Connection: close\r\n") + BODY, True),
])
def test_framings_one_byte_per_write(standin: StandIn, name: str, make: Callable[[], bytes], close: bool) -> None:
    standin.answer, standin.close_after, standin.bytewise = make, close, True
    out, err, e, code = collect(standin)
    assert e is None, f"{name}: {e}"
    assert (out, err, code) == (EVERY, b"err", 7)
    head, body = standin.requests[-1]
    assert head.startswith(f"POST /v1/sandboxes/{ID}/exec/stream HTTP/1.1\r\n")
    assert f"\r\nHost: 127.0.0.1:{standin.url.rsplit(':', 1)[1]}\r\n" in head
    assert "\r\nAuthorization: Bearer ork_test\r\n" in head
    assert f"\r\nAccept: {FRAMES}" in head
    # Its own client, which never asks the server to close first (a server
    # closing with an unread request body resets the connection, and the
    # reset loses the answer's end); httpx would say keep-alive.
    assert "\r\nconnection:" not in head.lower()
    assert json.loads(body)["command"] == "echo hi"


def test_api_error_is_its_class(standin: StandIn) -> None:
    e = b'{"error":{"code":"sandbox_not_ready","message":"The sandbox is paused","details":{}}}'
    standin.answer = lambda: (b"HTTP/1.1 409 Conflict\r\nContent-Type: application/json\r\nX-Request-Id: req_409\r\n"
                              b"Content-Length: " + str(len(e)).encode() + b"\r\n\r\n" + e)
    _, _, err, _ = collect(standin)
    assert isinstance(err, SandboxNotReady) and err.request_id == "req_409", repr(err)


@pytest.mark.parametrize("name,wire,close", [
    ("not HTTP", b"SSH-2.0-OpenSSH_9.2\r\n\r\n", True),
    ("a head that never ends", b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * (200 << 10), False),
    ("a chunk size that is not hex", ok_head("Transfer-Encoding: chunked\r\n") + b"zz\r\nabc\r\n", False),
    ("a chunk not followed by CRLF", ok_head("Transfer-Encoding: chunked\r\n") + b"3\r\nabcXY\r\n", False),
    ("a Content-Length that is not a number", ok_head("Content-Length: -1\r\n"), False),
    ("closed inside the head", b"HTTP/1.1 200 OK\r\nContent-", True),
    ("a 204 without a body (the connection kept open)", b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", False),
    ("closed inside a chunk", ok_head("Transfer-Encoding: chunked\r\n") + b"ff\r\nabc", True),
])
def test_hostile_answers_are_errors_not_hangs(standin: StandIn, name: str, wire: bytes, close: bool) -> None:
    standin.answer, standin.close_after, standin.bytewise = (lambda: wire), close, False
    t0 = time.monotonic()
    _, _, err, _ = collect(standin)
    assert isinstance(err, OrkestrError), f"{name}: {err!r}"
    assert time.monotonic() - t0 < 4, f"{name}: took until the timeout"


def test_nothing_listening_is_a_connection_error() -> None:
    s = socket.create_server(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(httpx.ConnectError):
        open_stream(f"http://127.0.0.1:{port}/v1/x", "POST", {}, b"{}", 2, 2)


@pytest.mark.parametrize("client", ["raw", "httpx"])
def test_chunks_that_come_with_the_exit_are_all_returned(standin: StandIn, client: str) -> None:
    """Output and the exit in one read: every chunk of it is returned before
    the iteration ends (the iterator used to end at the exit, dropping all
    but the first). Through the raw client and through httpx (an
    http_client given)."""
    standin.answer = lambda: ok_head(f"Content-Length: {len(BODY)}\r\n") + BODY
    standin.close_after, standin.bytewise = False, False
    kw = {} if client == "raw" else {"http_client": httpx.Client()}
    c = orkestr.Client(api_key="ork_test", base_url=standin.url, timeout=5, **kw)  # type: ignore[arg-type]
    try:
        st = orkestr.Sandbox.get(ID, client=c).exec_stream("x")
        got = [(ch.stream, ch.raw) for ch in st]
    finally:
        c.close()
    assert got == [("stdout", EVERY), ("stderr", b"err")]
    assert st.result is not None and st.result.exit_code == 7


@pytest.mark.asyncio
async def test_async_chunks_that_come_with_the_exit_are_all_returned(standin: StandIn) -> None:
    standin.answer = lambda: ok_head(f"Content-Length: {len(BODY)}\r\n") + BODY
    standin.close_after, standin.bytewise = False, False
    c = orkestr.AsyncClient(api_key="ork_test", base_url=standin.url, timeout=5)
    try:
        sbx = await orkestr.AsyncSandbox.get(ID, client=c)
        got = [(ch.stream, ch.raw) async for ch in sbx.exec_stream("x")]
    finally:
        await c.aclose()
    assert got == [("stdout", EVERY), ("stderr", b"err")]


def test_ndjson_lines_cut_inside_a_character(standin: StandIn) -> None:
    """An older server's NDJSON stream through the raw client: a line whose
    UTF-8 character is cut between two reads arrives whole."""
    lines = ('{"type":"stdout","data":"h\u00e9 \u20ac"}\n'
             '{"type":"exit","exit_code":0,"duration_ms":1}\n').encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nContent-Length: {len(lines)}\r\n\r\n"
    standin.answer = lambda: head.encode() + lines
    standin.close_after = False
    standin.cut_at = len(head) + lines.index("\u00e9".encode()) + 1  # inside the é
    client = orkestr.Client(api_key="ork_test", base_url=standin.url, timeout=5)
    try:
        got = [c.data for c in orkestr.Sandbox.get(ID, client=client).exec_stream("x")]
    finally:
        client.close()
    assert "".join(got) == "h\u00e9 \u20ac"
