"""Interactive terminals: GET /v1/sandboxes/{id}/pty, a WebSocket whose
binary messages are terminal bytes (both ways) and whose text messages are
JSON control messages (docs/api.md, Terminals). Built on ``websockets``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, AsyncIterator, Dict, Iterator, Mapping, Optional, Union
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection as AsyncConnection
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection as SyncConnection
from websockets.sync.client import connect as sync_connect

from ._errors import STATUS_OF_CODE, APIConnectionError, OrkestrError, classify
from ._version import __version__

__all__ = ["Terminal", "AsyncTerminal", "TerminalExit"]

# Messages held for a reader that is not reading before the connection
# stops reading from the network (the server sends at most 32 KiB each).
_MAX_QUEUE = 32
_MAX_MESSAGE = 1 << 20


@dataclass(frozen=True)
class TerminalExit:
    """How a terminal's program ended; ``exit_code`` is 128+N after signal N."""

    exit_code: int
    duration_ms: int


def _ws_url(base_url: str, path: str) -> str:
    u = urlsplit(base_url + "/v1" + path)
    return urlunsplit(("wss" if u.scheme == "https" else "ws", u.netloc, u.path, "", ""))


def _headers(key: str) -> Dict[str, str]:
    return {"Authorization": "Bearer " + key}


def _start_message(
    command: Optional[str],
    env: Optional[Mapping[str, str]],
    cwd: Optional[str],
    rows: Optional[int],
    cols: Optional[int],
    user: Optional[str] = None,
) -> str:
    _check_size(rows, "rows")
    _check_size(cols, "cols")
    m: Dict[str, Any] = {"type": "start"}
    if command is not None:
        m["command"] = command
    if env is not None:
        m["env"] = dict(env)
    if cwd is not None:
        m["cwd"] = cwd
    if rows is not None:
        m["rows"] = rows
    if cols is not None:
        m["cols"] = cols
    if user is not None:
        m["user"] = user
    return json.dumps(m)


def _check_size(n: Optional[int], what: str) -> None:
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 1000):
        raise ValueError(f"orkestr: {what} must be an integer from 1 to 1000")


def _handshake_error(e: InvalidStatus, path: str) -> OrkestrError:
    r = e.response
    code, message = f"http_{r.status_code}", f"HTTP {r.status_code}"
    details: Dict[str, Any] = {}
    try:
        body = json.loads((r.body or b"").decode("utf-8", "replace"))
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict) and isinstance(err.get("code"), str):
            code = err["code"]
            message = str(err.get("message", ""))
            d = err.get("details")
            details = d if isinstance(d, dict) else {}
    except ValueError:
        pass
    return classify(r.status_code, code, message, details, r.headers.get("X-Request-Id"))


def _control_error(m: Mapping[str, Any]) -> OrkestrError:
    err = m.get("error") if isinstance(m.get("error"), dict) else {}
    assert isinstance(err, dict)
    code = str(err.get("code") or "internal")
    details = err.get("details") if isinstance(err.get("details"), dict) else {}
    return classify(STATUS_OF_CODE.get(code, 500), code, str(err.get("message", code)), details or {}, None)


def _closed_error(e: Exception) -> OrkestrError:
    return APIConnectionError(f"the terminal connection closed before the program exited: {e}", code="connection_error")


class _State:
    """What both flavours do with a message from the server."""

    def __init__(self) -> None:
        self.pid = 0
        self.exit: Optional[TerminalExit] = None

    def handle(self, msg: Union[str, bytes]) -> Optional[bytes]:
        """Returns output bytes, or None for a control message (raising the
        error one carries)."""
        if isinstance(msg, bytes):
            return msg
        try:
            m = json.loads(msg)
        except ValueError:
            raise OrkestrError("the terminal's server sent a control message that is not JSON", code="protocol_error")
        if not isinstance(m, dict):
            raise OrkestrError("the terminal's server sent a malformed control message", code="protocol_error")
        t = m.get("type")
        if t == "started":
            self.pid = int(m.get("pid", 0))
        elif t == "exit":
            self.exit = TerminalExit(int(m.get("exit_code", -1)), int(m.get("duration_ms", 0)))
        elif t == "error":
            raise _control_error(m)
        return None


class Terminal:
    """An interactive terminal (a PTY) in a sandbox; open it with
    ``Sandbox.terminal()``, best as a context manager.

    Iterating yields what the terminal shows as ``bytes``, exactly (escape
    sequences included), until the program exits; then ``exit`` holds its
    ``TerminalExit``. ``write`` types (``b"\\x03"`` is Ctrl-C), ``resize``
    resizes (the program gets SIGWINCH), ``wait`` discards the rest of the
    output and returns the exit, ``close`` hangs up, which kills the program
    and everything it started. Output is read from the network only as fast
    as it is iterated: a terminal nobody reads stalls its program.
    """

    def __init__(self, conn: SyncConnection) -> None:
        self._ws = conn
        self._state = _State()

    @classmethod
    def _open(cls, base_url: str, key: str, path: str, start: str, open_timeout: float) -> Terminal:
        try:
            ws = sync_connect(
                _ws_url(base_url, path), additional_headers=_headers(key), compression=None, proxy=None,
                user_agent_header=f"orkestr-python/{__version__}", max_size=_MAX_MESSAGE, max_queue=_MAX_QUEUE,
                open_timeout=open_timeout,
            )
        except InvalidStatus as e:
            raise _handshake_error(e, path) from None
        except (OSError, WebSocketException, TimeoutError) as e:
            raise APIConnectionError(f"GET /v1{path}: {type(e).__name__}: {e}", code="connection_error") from None
        t = cls(ws)
        try:
            ws.send(start)
            while t._state.pid == 0:
                t._state.handle(ws.recv(timeout=open_timeout))
        except BaseException as e:
            ws.close()
            if isinstance(e, ConnectionClosed):
                raise _closed_error(e) from None
            raise
        return t

    @property
    def pid(self) -> int:
        """The program's pid inside the sandbox."""
        return self._state.pid

    @property
    def exit(self) -> Optional[TerminalExit]:
        """How the program ended; None until it did."""
        return self._state.exit

    def write(self, data: Union[str, bytes]) -> None:
        b = data.encode() if isinstance(data, str) else bytes(data)
        for i in range(0, len(b), 32 << 10):
            self._ws.send(b[i : i + (32 << 10)])

    def resize(self, rows: int, cols: int) -> None:
        _check_size(rows, "rows")
        _check_size(cols, "cols")
        self._ws.send(json.dumps({"type": "resize", "rows": rows, "cols": cols}))

    def __iter__(self) -> Iterator[bytes]:
        while self._state.exit is None:
            try:
                msg = self._ws.recv()
            except ConnectionClosed as e:
                if self._state.exit is not None:
                    return
                raise _closed_error(e) from None
            out = self._state.handle(msg)
            if out:
                yield out
        self._ws.close()

    def wait(self) -> TerminalExit:
        for _ in self:
            pass
        assert self._state.exit is not None
        return self._state.exit

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncTerminal:
    """The asyncio ``Terminal``: ``async for`` over it, ``await`` its
    ``write``, ``resize``, ``wait`` and ``aclose``; ``async with`` closes it.
    Cancelling the task that iterates it does not hang up; ``aclose`` does."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._ws = conn
        self._state = _State()

    @classmethod
    async def _open(cls, base_url: str, key: str, path: str, start: str, open_timeout: float) -> AsyncTerminal:
        try:
            ws = await async_connect(
                _ws_url(base_url, path), additional_headers=_headers(key), compression=None, proxy=None,
                user_agent_header=f"orkestr-python/{__version__}", max_size=_MAX_MESSAGE, max_queue=_MAX_QUEUE,
                open_timeout=open_timeout,
            )
        except InvalidStatus as e:
            raise _handshake_error(e, path) from None
        except (OSError, WebSocketException, TimeoutError) as e:
            raise APIConnectionError(f"GET /v1{path}: {type(e).__name__}: {e}", code="connection_error") from None
        t = cls(ws)
        try:
            await ws.send(start)
            while t._state.pid == 0:
                t._state.handle(await ws.recv())
        except BaseException as e:
            await ws.close()
            if isinstance(e, ConnectionClosed):
                raise _closed_error(e) from None
            raise
        return t

    @property
    def pid(self) -> int:
        return self._state.pid

    @property
    def exit(self) -> Optional[TerminalExit]:
        return self._state.exit

    async def write(self, data: Union[str, bytes]) -> None:
        b = data.encode() if isinstance(data, str) else bytes(data)
        for i in range(0, len(b), 32 << 10):
            await self._ws.send(b[i : i + (32 << 10)])

    async def resize(self, rows: int, cols: int) -> None:
        _check_size(rows, "rows")
        _check_size(cols, "cols")
        await self._ws.send(json.dumps({"type": "resize", "rows": rows, "cols": cols}))

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self._state.exit is None:
            try:
                msg = await self._ws.recv()
            except ConnectionClosed as e:
                if self._state.exit is not None:
                    return
                raise _closed_error(e) from None
            out = self._state.handle(msg)
            if out:
                yield out
        await self._ws.close()

    async def wait(self) -> TerminalExit:
        async for _ in self:
            pass
        assert self._state.exit is not None
        return self._state.exit

    async def aclose(self) -> None:
        await self._ws.close()

    async def __aenter__(self) -> AsyncTerminal:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
