"""The asyncio twin of Sandbox: the same surface, awaitable."""

from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, AsyncIterable, AsyncIterator, BinaryIO, Dict, Iterable, List, Mapping, Optional, Union

import httpx

from ._client import AsyncClient, _transport_error, default_async_client, sandbox_path
from ._common import (
    DEFAULT_EXEC_TIMEOUT,
    EXEC_FRAMES,
    StreamState,
    is_framed,
    check_network_policy,
    create_body,
    exec_body,
    file_params,
    list_params,
    metrics_params,
    update_body,
)
from ._errors import OrkestrError
from ._terminal import AsyncTerminal, _start_message
from ._models import ExecChunk, ExecResult, FileEntry, Limits, Metrics, SandboxFields, Template
from ._processes import AsyncFileCalls, AsyncProcesses

__all__ = ["AsyncSandbox", "AsyncFiles", "AsyncExecStream"]


class AsyncSandbox(SandboxFields):
    """The asyncio version of :class:`orkestr.Sandbox`: the same attributes
    and methods, as coroutines; ``list`` is an async iterator,
    ``with_temp`` an async context manager and ``exec_stream`` an async
    iterator of chunks. Class methods take ``api_key=``/``base_url=`` or a
    ``client=`` (an :class:`orkestr.AsyncClient`)."""

    def __init__(self, data: Mapping[str, Any], client: AsyncClient) -> None:
        self._client = client
        self._set_fields(data)

    @property
    def client(self) -> AsyncClient:
        return self._client

    @property
    def files(self) -> AsyncFiles:
        return AsyncFiles(self)

    @property
    def processes(self) -> AsyncProcesses:
        """Background processes: start, list, get."""
        return AsyncProcesses(self)

    @classmethod
    async def create(
        cls,
        template: str,
        *,
        size: Optional[str] = None,
        network: Optional[str] = None,
        timeout_seconds: Optional[int] = None,
        env: Optional[Mapping[str, str]] = None,
        metadata: Optional[Mapping[str, str]] = None,
        region: Optional[str] = None,
        api_key: Optional[str] = None,
        base_url: Optional[str] = None,
        client: Optional[AsyncClient] = None,
    ) -> AsyncSandbox:
        """Start a sandbox and return it running. Never retried."""
        c = default_async_client(api_key, base_url, client)
        body = create_body(template, size, network, timeout_seconds, env, metadata, region)
        return cls(await c.json("POST", "/sandboxes", json_body=body), c)

    @classmethod
    @asynccontextmanager
    async def with_temp(
        cls,
        template: str,
        *,
        size: Optional[str] = None,
        network: Optional[str] = None,
        timeout_seconds: Optional[int] = None,
        env: Optional[Mapping[str, str]] = None,
        metadata: Optional[Mapping[str, str]] = None,
        region: Optional[str] = None,
        api_key: Optional[str] = None,
        base_url: Optional[str] = None,
        client: Optional[AsyncClient] = None,
    ) -> AsyncIterator[AsyncSandbox]:
        """Create a sandbox for an ``async with`` block and terminate it when
        the block ends, even by an exception or a cancellation."""
        sbx = await cls.create(
            template, size=size, network=network, timeout_seconds=timeout_seconds, env=env,
            metadata=metadata, region=region, api_key=api_key, base_url=base_url, client=client,
        )
        try:
            yield sbx
        except BaseException:
            try:
                await sbx.terminate()
            except Exception:
                pass
            raise
        await sbx.terminate()

    @classmethod
    async def get(
        cls, sandbox_id: str, *, api_key: Optional[str] = None, base_url: Optional[str] = None,
        client: Optional[AsyncClient] = None,
    ) -> AsyncSandbox:
        c = default_async_client(api_key, base_url, client)
        return cls(await c.json("GET", sandbox_path(sandbox_id)), c)

    @classmethod
    async def resume(
        cls, sandbox_id: str, *, api_key: Optional[str] = None, base_url: Optional[str] = None,
        client: Optional[AsyncClient] = None,
    ) -> AsyncSandbox:
        c = default_async_client(api_key, base_url, client)
        return cls(await c.json("POST", sandbox_path(sandbox_id, "/resume")), c)

    @classmethod
    async def limits(
        cls, *, api_key: Optional[str] = None, base_url: Optional[str] = None,
        client: Optional[AsyncClient] = None,
    ) -> Limits:
        c = default_async_client(api_key, base_url, client)
        return Limits._from(await c.json("GET", "/limits"))

    @classmethod
    async def templates(
        cls, *, api_key: Optional[str] = None, base_url: Optional[str] = None,
        client: Optional[AsyncClient] = None,
    ) -> List[Template]:
        c = default_async_client(api_key, base_url, client)
        data = (await c.json("GET", "/templates")).get("data") or []
        return [Template._from(t) for t in data if isinstance(t, dict)]

    @classmethod
    async def list(
        cls,
        *,
        status: Optional[str] = None,
        page_size: Optional[int] = None,
        api_key: Optional[str] = None,
        base_url: Optional[str] = None,
        client: Optional[AsyncClient] = None,
    ) -> AsyncIterator[AsyncSandbox]:
        """Iterate (``async for``) over the account's sandboxes, newest
        first, fetching pages as it goes."""
        c = default_async_client(api_key, base_url, client)
        cursor: Optional[str] = None
        while True:
            page = await c.json("GET", "/sandboxes", params=list_params(status, page_size, cursor))
            for d in page.get("data") or []:
                yield cls(d, c)
            nxt = page.get("next_cursor")
            if not isinstance(nxt, str) or not nxt or nxt == cursor:
                return
            cursor = nxt

    async def refresh(self) -> None:
        self._set_fields(await self._client.json("GET", sandbox_path(self.id)))

    async def update(
        self, *, timeout_seconds: Optional[int] = None, metadata: Optional[Mapping[str, str]] = None
    ) -> None:
        body = update_body(timeout_seconds, metadata)
        self._set_fields(await self._client.json("PATCH", sandbox_path(self.id), json_body=body))

    async def exec(
        self,
        command: str,
        *,
        timeout_seconds: Optional[int] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        stdin: Union[str, bytes, None] = None,
        user: Optional[str] = None,
    ) -> ExecResult:
        body = exec_body(command, timeout_seconds, env, cwd, stdin)
        if user is not None:
            body["user"] = user
        resp = await self._client.request(
            "POST", sandbox_path(self.id, "/exec"), json_body=body,
            extra_timeout=float(timeout_seconds or DEFAULT_EXEC_TIMEOUT),
        )
        res = ExecResult._from(resp.json())
        check_network_policy(res, resp.headers.get("x-request-id"))
        return res

    def exec_stream(
        self,
        command: str,
        *,
        timeout_seconds: Optional[int] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        stdin: Union[str, bytes, None] = None,
    ) -> AsyncExecStream:
        """Run ``command``; ``async for`` over the result yields its output
        as it is written. The command starts when iteration does."""
        body = exec_body(command, timeout_seconds, env, cwd, stdin)
        return AsyncExecStream(self._client, sandbox_path(self.id, "/exec/stream"), body,
                               float(timeout_seconds or DEFAULT_EXEC_TIMEOUT))

    async def terminal(
        self,
        command: Optional[str] = None,
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        rows: Optional[int] = None,
        cols: Optional[int] = None,
        user: Optional[str] = None,
    ) -> AsyncTerminal:
        """Open an interactive terminal (a PTY) running ``command`` with
        ``/bin/sh -c``, or the login shell of ``user`` ("root", the default, or
        "user": uid 1000, HOME /home/user); see AsyncTerminal. Use it
        with ``async with``: leaving it hangs up."""
        start = _start_message(command, env, cwd, rows, cols, user)
        cfg = self._client._cfg
        return await AsyncTerminal._open(cfg.base_url, cfg.key.get(), sandbox_path(self.id, "/pty"), start, min(cfg.timeout, 60.0))

    async def metrics(self, since: Optional[datetime] = None) -> Metrics:
        return Metrics._from(await self._client.json("GET", sandbox_path(self.id, "/metrics"),
                                                     params=metrics_params(since)))

    async def pause(self) -> str:
        out = await self._client.json("POST", sandbox_path(self.id, "/pause"))
        self.status, self.expires_at = "paused", None
        sid = out.get("id") if isinstance(out, dict) else None
        return sid if isinstance(sid, str) and sid else self.id

    async def fork(self, count: int = 1) -> List["AsyncSandbox"]:
        """See Sandbox.fork."""
        out = await self._client.json("POST", sandbox_path(self.id, "/fork"), json_body={"count": count})
        data = out.get("data") if isinstance(out, dict) else None
        return [type(self)(d, self._client) for d in (data or []) if isinstance(d, dict)]

    async def terminate(self) -> None:
        self._set_fields(await self._client.json("DELETE", sandbox_path(self.id)))


class AsyncExecStream:
    """A running command's output as an async iterator of ExecChunk; then
    ``result``. Use ``async with`` (or ``aclose``) when not iterating to the
    end."""

    def __init__(self, client: AsyncClient, path: str, body: Dict[str, Any], extra_timeout: float) -> None:
        self._client = client
        self._path = path
        self._body = body
        self._extra = extra_timeout
        self._resp: Optional[httpx.Response] = None
        self._lines: Optional[AsyncIterator[str]] = None
        self._bytes: Optional[AsyncIterator[bytes]] = None  # the binary framing
        self._pending: List[ExecChunk] = []
        self._state = StreamState()

    @property
    def result(self) -> Optional[ExecResult]:
        return self._state.result

    def __aiter__(self) -> AsyncExecStream:
        return self

    async def __anext__(self) -> ExecChunk:
        # The last read may complete several chunks and the exit at once:
        # those chunks are still to be returned.
        if self._state.done and not self._pending:
            raise StopAsyncIteration
        if self._lines is None and self._bytes is None:
            self._resp = await self._client.stream("POST", self._path, json_body=self._body,
                                                   extra_timeout=self._extra, accept=EXEC_FRAMES)
            self._state.request_id = self._resp.headers.get("x-request-id")
            if is_framed(self._resp):
                self._bytes = self._resp.aiter_bytes()
            else:
                self._lines = self._resp.aiter_lines()
        try:
            while self._bytes is not None:
                if self._pending:
                    return self._pending.pop(0)
                if self._state.done:
                    await self.aclose()
                    self._state.raise_if_failed()
                    raise StopAsyncIteration
                data: Optional[bytes]
                try:
                    data = await self._bytes.__anext__()
                except StopAsyncIteration:
                    data = None
                except httpx.TransportError as e:
                    raise _transport_error(e, "POST", self._path) from None
                self._pending.extend(self._state.feed_bytes(data))
            assert self._lines is not None
            while True:
                line: Optional[str]
                try:
                    line = await self._lines.__anext__()
                except StopAsyncIteration:
                    line = None
                except httpx.TransportError as e:
                    raise _transport_error(e, "POST", self._path) from None
                chunk = self._state.feed(line)
                if chunk is not None:
                    return chunk
                if self._state.done:
                    await self.aclose()
                    self._state.raise_if_failed()
                    raise StopAsyncIteration
        except BaseException:
            await self.aclose()
            raise

    async def wait(self) -> ExecResult:
        async for _ in self:
            pass
        if self._state.result is None:
            raise OrkestrError("exec stream closed before the command ended", code="stream_closed")
        return self._state.result

    async def aclose(self) -> None:
        self._state.done = True
        self._pending.clear()
        if self._resp is not None:
            await self._resp.aclose()

    async def __aenter__(self) -> AsyncExecStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncFiles(AsyncFileCalls):
    """Files inside a sandbox, asyncio version of :class:`orkestr.Files`."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sbx = sandbox

    def _path(self, suffix: str) -> str:
        return sandbox_path(self._sbx.id, suffix)

    async def write(self, path: str, content: str, *, user: Optional[str] = None) -> None:
        await self.write_bytes(path, content.encode("utf-8"), user=user)

    async def write_bytes(self, path: str, data: Union[bytes, bytearray, memoryview], *, user: Optional[str] = None) -> None:
        await self._sbx.client.request("PUT", self._path("/files"), params=file_params(path, user), content=bytes(data))

    async def read_bytes(self, path: str, *, user: Optional[str] = None) -> bytes:
        return (await self._sbx.client.request("GET", self._path("/files"), params=file_params(path, user))).content

    async def read(self, path: str, encoding: str = "utf-8", *, user: Optional[str] = None) -> str:
        return (await self.read_bytes(path, user=user)).decode(encoding)

    async def list(self, path: str, *, user: Optional[str] = None) -> List[FileEntry]:
        out = await self._sbx.client.json("GET", self._path("/files/list"), params=file_params(path, user))
        return [FileEntry._from(e) for e in (out.get("entries") or []) if isinstance(e, dict)]

    async def write_stream(self, path: str, data: Union[AsyncIterable[bytes], Iterable[bytes]], *, user: Optional[str] = None) -> None:
        """Stream an (async) iterable of bytes into the file at ``path``
        without holding it in memory. Not retried."""
        await self._sbx.client.request("PUT", self._path("/files"), params=file_params(path, user), content=_achunks(data))

    async def read_to(self, path: str, out: BinaryIO, *, user: Optional[str] = None) -> int:
        """Stream the file at ``path`` into the binary file object ``out``."""
        return await _acopy_out(await self._sbx.client.stream("GET", self._path("/files"), params=file_params(path, user)), out)

    async def write_archive(
        self, dir: str, archive: Union[bytes, AsyncIterable[bytes], Iterable[bytes]]
    ) -> Dict[str, Any]:
        """Extract a tar archive (plain, gzip or zstd) into ``dir``, as
        :meth:`orkestr.Files.write_archive`."""
        body = archive if isinstance(archive, bytes) else _achunks(archive)
        out = await self._sbx.client.json("PUT", self._path("/files/archive"), params=file_params(dir), content=body)
        return out if isinstance(out, dict) else {}

    async def read_archive_to(self, dir: str, out: BinaryIO, compression: Optional[str] = None) -> int:
        """Stream the directory ``dir`` as a tar archive into ``out``."""
        params = {**file_params(dir), **({"compression": compression} if compression else {})}
        return await _acopy_out(await self._sbx.client.stream("GET", self._path("/files/archive"), params=params), out)

    async def delete(self, path: str, *, user: Optional[str] = None) -> None:
        await self._sbx.client.request("DELETE", self._path("/files"), params=file_params(path, user))


async def _acopy_out(resp: httpx.Response, out: BinaryIO) -> int:
    n = 0
    try:
        # As they arrive (see _copy_out in _sandbox.py).
        async for b in resp.aiter_bytes():
            out.write(b)
            n += len(b)
    except httpx.TransportError as e:
        raise _transport_error(e, "GET", resp.request.url.path) from None
    finally:
        await resp.aclose()
    return n


async def _achunks(data: Union[AsyncIterable[bytes], Iterable[bytes]]) -> AsyncIterator[bytes]:
    if hasattr(data, "__aiter__"):
        async for b in data:
            yield bytes(b)
    else:
        for b in data:
            yield bytes(b)
