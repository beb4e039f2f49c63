"""Background processes, users and the extended file calls (stat, exists,
mkdir, rename, watch), sync and asyncio."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import (
    TYPE_CHECKING, Any, AsyncIterator, Callable, Dict, Iterator, List, Mapping, Optional, Union,
)

import httpx

from ._client import AsyncClient, Client, sandbox_path
from ._errors import STATUS_OF_CODE, OrkestrError, classify
from ._models import ExecChunk, _int, _str
from ._time import parse_opt_time, parse_time

if TYPE_CHECKING:
    from ._async_sandbox import AsyncSandbox
    from ._sandbox import Sandbox

__all__ = [
    "Detached", "ProcessInfo", "Process", "AsyncProcess", "Processes", "AsyncProcesses",
    "FileStat", "WatchEvent", "Watch", "AsyncWatch",
]

# Streams that last as long as a process or a watch: no read timeout worth
# the name.
_LONG = 24 * 3600.0

Data = Union[str, bytes, bytearray, memoryview]


class Detached(OrkestrError):
    """The sandbox was paused or stopped while attached or watching; attach
    or watch again after a resume."""


def _opt_int(d: Mapping[str, Any], k: str) -> Optional[int]:
    v = d.get(k)
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _opt_str(d: Mapping[str, Any], k: str) -> Optional[str]:
    v = d.get(k)
    return v if isinstance(v, str) else None


@dataclass
class ProcessInfo:
    """A background process as the API last described it."""

    pid: int
    command: str
    cwd: str
    user: str
    started_at: datetime
    running: bool
    exit_code: Optional[int]
    signal: Optional[int]
    ended_at: Optional[datetime]

    @classmethod
    def _from(cls, d: Any) -> ProcessInfo:
        m: Mapping[str, Any] = d if isinstance(d, dict) else {}
        return cls(
            pid=_int(m, "pid"), command=_str(m, "command"), cwd=_str(m, "cwd"), user=_str(m, "user") or "root",
            started_at=parse_time(_str(m, "started_at")) if _str(m, "started_at") else datetime.fromtimestamp(0),
            running=m.get("running") is True,
            exit_code=_opt_int(m, "exit_code"), signal=_opt_int(m, "signal"), ended_at=parse_opt_time(m.get("ended_at")),
        )


@dataclass(frozen=True)
class FileStat:
    """A path inside a sandbox (a final symlink is not followed)."""

    name: str
    path: str
    type: str
    size: int
    mode: int
    uid: int
    gid: int
    owner: Optional[str]
    group: Optional[str]
    accessed_at: Optional[datetime]
    modified_at: Optional[datetime]
    changed_at: Optional[datetime]
    symlink_target: Optional[str]

    @classmethod
    def _from(cls, d: Any) -> FileStat:
        m: Mapping[str, Any] = d if isinstance(d, dict) else {}
        return cls(
            name=_str(m, "name"), path=_str(m, "path"), type=_str(m, "type"), size=_int(m, "size"),
            mode=_int(m, "mode"), uid=_int(m, "uid"), gid=_int(m, "gid"),
            owner=_opt_str(m, "owner"), group=_opt_str(m, "group"),
            accessed_at=parse_opt_time(m.get("accessed_at")), modified_at=parse_opt_time(m.get("modified_at")),
            changed_at=parse_opt_time(m.get("changed_at")), symlink_target=_opt_str(m, "symlink_target"),
        )


@dataclass(frozen=True)
class WatchEvent:
    """A change under a watched directory; paths are relative to it.
    ``type`` is create, write, remove, rename (``from_path`` the old path),
    chmod, overflow (changes were dropped) or limit."""

    type: str
    path: str
    is_dir: bool
    from_path: Optional[str] = None


def _stdin_body(data: Data) -> Dict[str, Any]:
    if isinstance(data, str):
        return {"data": data}
    return {"data_base64": base64.b64encode(bytes(data)).decode("ascii")}


class _Lines:
    """Follows one NDJSON stream of a process output or a watch."""

    def __init__(self, what: str, request_id: Optional[str]) -> None:
        self.what = what
        self.request_id = request_id

    def parse(self, line: str) -> Optional[Dict[str, Any]]:
        line = line.strip()
        if not line:
            return None
        try:
            ev = json.loads(line)
        except ValueError:
            raise OrkestrError(f"the {self.what} sent a line that is not JSON", code="invalid_response",
                               request_id=self.request_id) from None
        if not isinstance(ev, dict):
            return None
        if ev.get("type") == "error":
            raw = ev.get("error")
            err: Dict[str, Any] = raw if isinstance(raw, dict) else {}
            code = err.get("code") if isinstance(err.get("code"), str) else "internal"
            details = err.get("details") if isinstance(err.get("details"), dict) else {}
            raise classify(STATUS_OF_CODE.get(str(code), 500), str(code), str(err.get("message") or ""),
                           details or {}, self.request_id)
        return ev

    def ended(self) -> OrkestrError:
        return OrkestrError(f"the {self.what} ended early (connection lost?)", code="stream_ended",
                            request_id=self.request_id)


def _output_event(ev: Dict[str, Any], proc: Any, on_dropped: Optional[Callable[[int], None]]) -> Optional[ExecChunk]:
    """The chunk of an output line, or None; raises StopIteration-like
    markers through the return of ``done``."""
    typ = ev.get("type")
    if typ in ("stdout", "stderr"):
        data = ev.get("data")
        return ExecChunk(stream=str(typ), data=data if isinstance(data, str) else "")
    if typ == "dropped" and on_dropped is not None:
        on_dropped(_int(ev, "bytes"))
    return None


# -- sync -------------------------------------------------------------------


class Process(ProcessInfo):
    """A command running in the background: it outlives the call that
    started it and survives pause/resume. Attributes are as of the last call
    that returned or refreshed it."""

    _client: Client
    _base: str

    @classmethod
    def _bind(cls, info: ProcessInfo, client: Client, sandbox_id: str) -> Process:
        p = cls(**info.__dict__)
        p._client = client
        p._base = sandbox_path(sandbox_id, f"/processes/{info.pid}")
        return p

    def _update(self, raw: Any) -> None:
        self.__dict__.update(ProcessInfo._from(raw).__dict__)

    def output(self, *, replay: bool = False, on_dropped: Optional[Callable[[int], None]] = None) -> Iterator[ExecChunk]:
        """Yield the output as it is produced (from now, or from the oldest
        buffered byte with ``replay``) until the process ends, then update
        the attributes. Closing the generator (``break``) detaches without
        stopping the process; a pause raises Detached."""
        resp = self._client.stream("GET", self._base + "/output", params={"replay": "true"} if replay else None,
                                   extra_timeout=_LONG)
        lines = _Lines("process output", resp.headers.get("x-request-id"))
        try:
            for line in resp.iter_lines():
                ev = lines.parse(line)
                if ev is None:
                    continue
                chunk = _output_event(ev, self, on_dropped)
                if chunk is not None:
                    yield chunk
                elif ev.get("type") == "exit":
                    self._update(ev.get("process"))
                    return
                elif ev.get("type") == "detached":
                    raise Detached("the process output ended: the sandbox was paused or stopped", code="detached")
            raise lines.ended()
        except httpx.TransportError as e:
            raise OrkestrError(f"the process output broke off: {e}", code="connection_error") from None
        finally:
            resp.close()

    def send_stdin(self, data: Data) -> None:
        """Write text or bytes (at most 512 KiB a call) to its stdin."""
        self._client.request("POST", self._base + "/stdin", json_body=_stdin_body(data))

    def close_stdin(self) -> None:
        """Close its stdin (closing twice is fine)."""
        self._client.request("POST", self._base + "/stdin", json_body={"eof": True})

    def kill(self, signal: Union[int, str] = "TERM") -> None:
        """Send a signal (number or name) to its process group."""
        self._client.request("POST", self._base + "/signal", json_body={"signal": signal})

    def wait(self, timeout: Optional[float] = None) -> Process:
        """Wait until it has ended (or ``timeout`` seconds passed) and
        refresh the attributes; returns self."""
        left = timeout
        while True:
            step = 60 if left is None else max(0, min(60, int(left)))
            self._update(self._client.json("POST", self._base + "/wait", json_body={"timeout_seconds": step},
                                           extra_timeout=float(step)))
            if not self.running:
                return self
            if left is not None:
                left -= step
                if left <= 0:
                    return self

    def refresh(self) -> Process:
        self._update(self._client.json("GET", self._base))
        return self


class Processes:
    """Background processes of one sandbox."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sbx = sandbox

    def start(self, command: str, *, env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None,
              user: Optional[str] = None) -> Process:
        """Start ``command`` with /bin/sh -c in the background; returns as
        soon as it runs. ``user`` is "root" (default) or "user". Never
        retried."""
        body: Dict[str, Any] = {"command": command}
        if env is not None:
            body["env"] = dict(env)
        if cwd is not None:
            body["cwd"] = cwd
        if user is not None:
            body["user"] = user
        raw = self._sbx.client.json("POST", sandbox_path(self._sbx.id, "/processes"), json_body=body)
        return Process._bind(ProcessInfo._from(raw), self._sbx.client, self._sbx.id)

    def list(self) -> List[Process]:
        """Running and recently ended processes started through the API, oldest first."""
        raw = self._sbx.client.json("GET", sandbox_path(self._sbx.id, "/processes"))
        items = raw.get("processes") if isinstance(raw, dict) else None
        return [Process._bind(ProcessInfo._from(p), self._sbx.client, self._sbx.id) for p in (items or [])]

    def get(self, pid: int) -> Process:
        """The process with this pid; OrkestrError code "process_not_found" if none."""
        raw = self._sbx.client.json("GET", sandbox_path(self._sbx.id, f"/processes/{int(pid)}"))
        return Process._bind(ProcessInfo._from(raw), self._sbx.client, self._sbx.id)


def _watch_event(ev: Dict[str, Any]) -> WatchEvent:
    return WatchEvent(type=_str(ev, "type"), path=_str(ev, "path"), is_dir=ev.get("is_dir") is True,
                      from_path=_opt_str(ev, "from"))


class Watch:
    """A watch of a directory: a context manager whose ``__enter__``
    returns once the watch holds, iterating over WatchEvent values until
    the directory is removed; leaving the block ends it."""

    def __init__(self, client: Client, path: str, params: Dict[str, str]) -> None:
        self._client, self._path, self._params = client, path, params
        self._resp: Optional[httpx.Response] = None
        self._lines: Optional[Iterator[str]] = None
        self._parse = _Lines("watch", None)

    def __enter__(self) -> Watch:
        self._resp = self._client.stream("GET", self._path, params=self._params, extra_timeout=_LONG)
        self._parse.request_id = self._resp.headers.get("x-request-id")
        self._lines = self._resp.iter_lines()
        for line in self._lines:
            ev = self._parse.parse(line)
            if ev is not None and ev.get("type") == "started":
                return self
        self.close()
        raise self._parse.ended()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[WatchEvent]:
        if self._lines is None:
            raise OrkestrError("use the watch in a with block", code="invalid_argument")
        try:
            for line in self._lines:
                ev = self._parse.parse(line)
                if ev is None or ev.get("type") == "started":
                    continue
                if ev.get("type") == "end":
                    return
                if ev.get("type") == "detached":
                    raise Detached("the watch ended: the sandbox was paused or stopped", code="detached")
                yield _watch_event(ev)
        except httpx.TransportError as e:
            raise OrkestrError(f"the watch broke off: {e}", code="connection_error") from None
        raise self._parse.ended()

    def close(self) -> None:
        if self._resp is not None:
            self._resp.close()


class FileCalls:
    """stat, exists, mkdir, rename and watch; mixed into Files."""

    _sbx: Sandbox

    def _fparams(self, path: str, user: Optional[str]) -> Dict[str, str]:
        p = {"path": path}
        if user is not None:
            p["user"] = user
        return p

    def stat(self, path: str, *, user: Optional[str] = None) -> FileStat:
        """Type, size, mode, owner, times and symlink target of ``path``."""
        return FileStat._from(self._sbx.client.json("GET", sandbox_path(self._sbx.id, "/files/stat"),
                                                    params=self._fparams(path, user)))

    def exists(self, path: str, *, user: Optional[str] = None) -> bool:
        """Whether ``path`` exists (missing is False, not an error)."""
        raw = self._sbx.client.json("GET", sandbox_path(self._sbx.id, "/files/exists"), params=self._fparams(path, user))
        return isinstance(raw, dict) and raw.get("exists") is True

    def mkdir(self, path: str, *, parents: bool = True, mode: Optional[int] = None,
              user: Optional[str] = None) -> FileStat:
        """Make a directory (and, with ``parents``, its missing parents)."""
        body: Dict[str, Any] = {"path": path, "parents": parents}
        if mode is not None:
            body["mode"] = mode
        if user is not None:
            body["user"] = user
        return FileStat._from(self._sbx.client.json("POST", sandbox_path(self._sbx.id, "/files/mkdir"), json_body=body))

    def rename(self, src: str, dst: str, *, overwrite: bool = False, user: Optional[str] = None) -> FileStat:
        """Move ``src`` to ``dst``; an existing ``dst`` raises code
        "file_exists" unless ``overwrite``."""
        body: Dict[str, Any] = {"from": src, "to": dst, "overwrite": overwrite}
        if user is not None:
            body["user"] = user
        return FileStat._from(self._sbx.client.json("POST", sandbox_path(self._sbx.id, "/files/rename"), json_body=body))

    def watch(self, path: str, *, recursive: bool = False, user: Optional[str] = None) -> Watch:
        """Watch a directory: ``with sbx.files.watch("/workspace") as w: for ev in w: ...``;
        as ``user``, only a directory the user may read."""
        params = {"path": path}
        if user is not None:
            params["user"] = user
        if recursive:
            params["recursive"] = "true"
        return Watch(self._sbx.client, sandbox_path(self._sbx.id, "/files/watch"), params)


# -- asyncio ----------------------------------------------------------------


class AsyncProcess(ProcessInfo):
    """The asyncio Process."""

    _client: AsyncClient
    _base: str

    @classmethod
    def _bind(cls, info: ProcessInfo, client: AsyncClient, sandbox_id: str) -> AsyncProcess:
        p = cls(**info.__dict__)
        p._client = client
        p._base = sandbox_path(sandbox_id, f"/processes/{info.pid}")
        return p

    def _update(self, raw: Any) -> None:
        self.__dict__.update(ProcessInfo._from(raw).__dict__)

    async def output(self, *, replay: bool = False,
                     on_dropped: Optional[Callable[[int], None]] = None) -> AsyncIterator[ExecChunk]:
        """An async generator of the output, as Process.output."""
        resp = await self._client.stream("GET", self._base + "/output",
                                         params={"replay": "true"} if replay else None, extra_timeout=_LONG)
        lines = _Lines("process output", resp.headers.get("x-request-id"))
        try:
            async for line in resp.aiter_lines():
                ev = lines.parse(line)
                if ev is None:
                    continue
                chunk = _output_event(ev, self, on_dropped)
                if chunk is not None:
                    yield chunk
                elif ev.get("type") == "exit":
                    self._update(ev.get("process"))
                    return
                elif ev.get("type") == "detached":
                    raise Detached("the process output ended: the sandbox was paused or stopped", code="detached")
            raise lines.ended()
        except httpx.TransportError as e:
            raise OrkestrError(f"the process output broke off: {e}", code="connection_error") from None
        finally:
            await resp.aclose()

    async def send_stdin(self, data: Data) -> None:
        await self._client.request("POST", self._base + "/stdin", json_body=_stdin_body(data))

    async def close_stdin(self) -> None:
        await self._client.request("POST", self._base + "/stdin", json_body={"eof": True})

    async def kill(self, signal: Union[int, str] = "TERM") -> None:
        await self._client.request("POST", self._base + "/signal", json_body={"signal": signal})

    async def wait(self, timeout: Optional[float] = None) -> AsyncProcess:
        left = timeout
        while True:
            step = 60 if left is None else max(0, min(60, int(left)))
            self._update(await self._client.json("POST", self._base + "/wait", json_body={"timeout_seconds": step},
                                                 extra_timeout=float(step)))
            if not self.running:
                return self
            if left is not None:
                left -= step
                if left <= 0:
                    return self

    async def refresh(self) -> AsyncProcess:
        self._update(await self._client.json("GET", self._base))
        return self


class AsyncProcesses:
    """Background processes of one AsyncSandbox."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sbx = sandbox

    async def start(self, command: str, *, env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None,
                    user: Optional[str] = None) -> AsyncProcess:
        body: Dict[str, Any] = {"command": command}
        if env is not None:
            body["env"] = dict(env)
        if cwd is not None:
            body["cwd"] = cwd
        if user is not None:
            body["user"] = user
        raw = await self._sbx.client.json("POST", sandbox_path(self._sbx.id, "/processes"), json_body=body)
        return AsyncProcess._bind(ProcessInfo._from(raw), self._sbx.client, self._sbx.id)

    async def list(self) -> List[AsyncProcess]:
        raw = await self._sbx.client.json("GET", sandbox_path(self._sbx.id, "/processes"))
        items = raw.get("processes") if isinstance(raw, dict) else None
        return [AsyncProcess._bind(ProcessInfo._from(p), self._sbx.client, self._sbx.id) for p in (items or [])]

    async def get(self, pid: int) -> AsyncProcess:
        raw = await self._sbx.client.json("GET", sandbox_path(self._sbx.id, f"/processes/{int(pid)}"))
        return AsyncProcess._bind(ProcessInfo._from(raw), self._sbx.client, self._sbx.id)


class AsyncWatch:
    """The asyncio Watch: ``async with sbx.files.watch(path) as w: async for ev in w``."""

    def __init__(self, client: AsyncClient, path: str, params: Dict[str, str]) -> None:
        self._client, self._path, self._params = client, path, params
        self._resp: Optional[httpx.Response] = None
        self._lines: Optional[AsyncIterator[str]] = None
        self._parse = _Lines("watch", None)

    async def __aenter__(self) -> AsyncWatch:
        self._resp = await self._client.stream("GET", self._path, params=self._params, extra_timeout=_LONG)
        self._parse.request_id = self._resp.headers.get("x-request-id")
        self._lines = self._resp.aiter_lines()
        async for line in self._lines:
            ev = self._parse.parse(line)
            if ev is not None and ev.get("type") == "started":
                return self
        await self.aclose()
        raise self._parse.ended()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def __aiter__(self) -> AsyncIterator[WatchEvent]:
        if self._lines is None:
            raise OrkestrError("use the watch in an async with block", code="invalid_argument")
        try:
            async for line in self._lines:
                ev = self._parse.parse(line)
                if ev is None or ev.get("type") == "started":
                    continue
                if ev.get("type") == "end":
                    return
                if ev.get("type") == "detached":
                    raise Detached("the watch ended: the sandbox was paused or stopped", code="detached")
                yield _watch_event(ev)
        except httpx.TransportError as e:
            raise OrkestrError(f"the watch broke off: {e}", code="connection_error") from None
        raise self._parse.ended()

    async def aclose(self) -> None:
        if self._resp is not None:
            await self._resp.aclose()


class AsyncFileCalls:
    """stat, exists, mkdir, rename and watch; mixed into AsyncFiles."""

    _sbx: AsyncSandbox

    def _fparams(self, path: str, user: Optional[str]) -> Dict[str, str]:
        p = {"path": path}
        if user is not None:
            p["user"] = user
        return p

    async def stat(self, path: str, *, user: Optional[str] = None) -> FileStat:
        return FileStat._from(await self._sbx.client.json("GET", sandbox_path(self._sbx.id, "/files/stat"),
                                                          params=self._fparams(path, user)))

    async def exists(self, path: str, *, user: Optional[str] = None) -> bool:
        raw = await self._sbx.client.json("GET", sandbox_path(self._sbx.id, "/files/exists"),
                                          params=self._fparams(path, user))
        return isinstance(raw, dict) and raw.get("exists") is True

    async def mkdir(self, path: str, *, parents: bool = True, mode: Optional[int] = None,
                    user: Optional[str] = None) -> FileStat:
        body: Dict[str, Any] = {"path": path, "parents": parents}
        if mode is not None:
            body["mode"] = mode
        if user is not None:
            body["user"] = user
        return FileStat._from(await self._sbx.client.json("POST", sandbox_path(self._sbx.id, "/files/mkdir"),
                                                          json_body=body))

    async def rename(self, src: str, dst: str, *, overwrite: bool = False, user: Optional[str] = None) -> FileStat:
        body: Dict[str, Any] = {"from": src, "to": dst, "overwrite": overwrite}
        if user is not None:
            body["user"] = user
        return FileStat._from(await self._sbx.client.json("POST", sandbox_path(self._sbx.id, "/files/rename"),
                                                          json_body=body))

    def watch(self, path: str, *, recursive: bool = False, user: Optional[str] = None) -> AsyncWatch:
        params = {"path": path}
        if user is not None:
            params["user"] = user
        if recursive:
            params["recursive"] = "true"
        return AsyncWatch(self._sbx.client, sandbox_path(self._sbx.id, "/files/watch"), params)
