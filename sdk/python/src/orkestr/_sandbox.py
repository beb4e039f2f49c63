"""The synchronous Sandbox: create, run commands, move files, pause, resume
and terminate a sandbox of the orkestr API."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime
from typing import Any, BinaryIO, Dict, Iterable, Iterator, List, Mapping, Optional, Union

import httpx

from ._client import Client, _transport_error, default_client, sandbox_path
from ._rawhttp import RawResponse
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
from ._terminal import Terminal, _start_message
from ._models import ExecChunk, ExecResult, FileEntry, Limits, Metrics, SandboxFields, Template
from ._processes import FileCalls, Processes

__all__ = ["Sandbox", "Files", "ExecStream"]


class Sandbox(SandboxFields):
    """A sandbox of the API and a handle for acting on it.

    Its attributes (``id``, ``status``, ``template``, ``size``, ``cpu``,
    ``memory_mb``, ``network``, ``region``, ``timeout_seconds``,
    ``expires_at``, ``env_keys``, ``metadata``, ``created_at``,
    ``paused_at``, ``terminated_at``) are the API's Sandbox object as last
    seen; ``refresh``, ``update``, ``pause`` and ``terminate`` update them.

    Every class method takes ``api_key=`` and ``base_url=`` (defaults:
    ``ORKESTR_API_KEY``, ``ORKESTR_BASE_URL``) or a ``client=``.
    """

    def __init__(self, data: Mapping[str, Any], client: Client) -> None:
        self._client = client
        self._set_fields(data)

    @property
    def client(self) -> Client:
        return self._client

    @property
    def files(self) -> Files:
        """File operations inside this sandbox."""
        return Files(self)

    @property
    def processes(self) -> Processes:
        """Background processes: start, list, get."""
        return Processes(self)

    # -- class methods --------------------------------------------------

    @classmethod
    def create(
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
        client: Optional[Client] = None,
    ) -> Sandbox:
        """Start a sandbox and return it running. Never retried: a retry
        could start a second sandbox."""
        c = default_client(api_key, base_url, client)
        body = create_body(template, size, network, timeout_seconds, env, metadata, region)
        return cls(c.json("POST", "/sandboxes", json_body=body), c)

    @classmethod
    @contextmanager
    def with_temp(
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
        client: Optional[Client] = None,
    ) -> Iterator[Sandbox]:
        """Create a sandbox for a ``with`` block and terminate it when the
        block ends, even by an exception (which then propagates unchanged;
        a failure to terminate is raised only if the block succeeded)."""
        sbx = cls.create(
            template, size=size, network=network, timeout_seconds=timeout_seconds, env=env,
            metadata=metadata, region=region, api_key=api_key, base_url=base_url, client=client,
        )
        try:
            yield sbx
        except BaseException:
            try:
                sbx.terminate()
            except Exception:
                pass
            raise
        sbx.terminate()

    @classmethod
    def get(
        cls, sandbox_id: str, *, api_key: Optional[str] = None, base_url: Optional[str] = None,
        client: Optional[Client] = None,
    ) -> Sandbox:
        """The sandbox with this id (SandboxNotFound if it is not yours)."""
        c = default_client(api_key, base_url, client)
        return cls(c.json("GET", sandbox_path(sandbox_id)), c)

    @classmethod
    def resume(
        cls, sandbox_id: str, *, api_key: Optional[str] = None, base_url: Optional[str] = None,
        client: Optional[Client] = None,
    ) -> Sandbox:
        """Restore a paused sandbox, from any process, and return it running.
        Resuming a running sandbox returns it unchanged."""
        c = default_client(api_key, base_url, client)
        return cls(c.json("POST", sandbox_path(sandbox_id, "/resume")), c)

    @classmethod
    def limits(
        cls, *, api_key: Optional[str] = None, base_url: Optional[str] = None, client: Optional[Client] = None
    ) -> Limits:
        """Sizes, caps and monthly usage of the API key's plan."""
        c = default_client(api_key, base_url, client)
        return Limits._from(c.json("GET", "/limits"))

    @classmethod
    def templates(
        cls, *, api_key: Optional[str] = None, base_url: Optional[str] = None, client: Optional[Client] = None
    ) -> List[Template]:
        """The server's template catalog."""
        c = default_client(api_key, base_url, client)
        data = c.json("GET", "/templates").get("data") or []
        return [Template._from(t) for t in data if isinstance(t, dict)]

    @classmethod
    def list(
        cls,
        *,
        status: Optional[str] = None,
        page_size: Optional[int] = None,
        api_key: Optional[str] = None,
        base_url: Optional[str] = None,
        client: Optional[Client] = None,
    ) -> Iterator[Sandbox]:
        """Iterate over the account's sandboxes, newest first, fetching
        pages (of ``page_size``, 1..200) as it goes."""
        c = default_client(api_key, base_url, client)
        cursor: Optional[str] = None
        while True:
            page = c.json("GET", "/sandboxes", params=list_params(status, page_size, cursor))
            for d in page.get("data") or []:
                yield cls(d, c)
            nxt = page.get("next_cursor")
            if not isinstance(nxt, str) or not nxt or nxt == cursor:
                return
            cursor = nxt

    # -- instance methods -----------------------------------------------

    def refresh(self) -> None:
        """Reload the attributes from the API."""
        self._set_fields(self._client.json("GET", sandbox_path(self.id)))

    def update(self, *, timeout_seconds: Optional[int] = None, metadata: Optional[Mapping[str, str]] = None) -> None:
        """Change a running or paused sandbox: ``timeout_seconds`` is the
        running time left counted from now; ``metadata`` replaces the map."""
        body = update_body(timeout_seconds, metadata)
        self._set_fields(self._client.json("PATCH", sandbox_path(self.id), json_body=body))

    def exec(
        self,
        command: str,
        *,
        timeout_seconds: Optional[int] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        stdin: Union[str, bytes, None] = None,
        user: Optional[str] = None,
    ) -> ExecResult:
        """Run ``command`` with ``/bin/sh -c`` and wait for it. A non-zero
        exit code is returned, not raised; ExecTimeout (with the output so
        far) if it outlives ``timeout_seconds`` (default 60);
        NetworkPolicyError if it failed after blocked connections. Never
        retried."""
        body = exec_body(command, timeout_seconds, env, cwd, stdin)
        if user is not None:
            body["user"] = user
        resp = self._client.request(
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
    ) -> ExecStream:
        """Run ``command`` like ``exec``; iterate over the result to get its
        output as ExecChunk values as it is written. The command starts when
        iteration does. Errors are raised from the iteration."""
        body = exec_body(command, timeout_seconds, env, cwd, stdin)
        return ExecStream(self._client, sandbox_path(self.id, "/exec/stream"), body,
                          float(timeout_seconds or DEFAULT_EXEC_TIMEOUT))

    def terminal(
        self,
        command: Optional[str] = None,
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        rows: Optional[int] = None,
        cols: Optional[int] = None,
        user: Optional[str] = None,
    ) -> Terminal:
        """Open an interactive terminal (a PTY) running ``command`` with
        ``/bin/sh -c``, or the login shell of ``user`` ("root", the default, or
        "user": uid 1000, HOME /home/user); see Terminal. Use it as a
        context manager: leaving it hangs up."""
        start = _start_message(command, env, cwd, rows, cols, user)
        cfg = self._client._cfg
        return Terminal._open(cfg.base_url, cfg.key.get(), sandbox_path(self.id, "/pty"), start, min(cfg.timeout, 60.0))

    def metrics(self, since: Optional[datetime] = None) -> Metrics:
        """Live CPU and memory, the last ~60 s of samples (only those newer
        than ``since``, an aware datetime) and lifetime totals."""
        return Metrics._from(self._client.json("GET", sandbox_path(self.id, "/metrics"),
                                               params=metrics_params(since)))

    def pause(self) -> str:
        """Snapshot memory and disk and stop the clock; returns the id to
        pass to ``Sandbox.resume``. When the server keeps snapshots in a
        store it returns only once the snapshot is durable there (503
        ``snapshot_store_unavailable``: still running). SnapshotCapReached
        over the plan's cap."""
        out = self._client.json("POST", sandbox_path(self.id, "/pause"))
        self.status, self.expires_at = "paused", None
        sid = out.get("id") if isinstance(out, dict) else None
        return sid if isinstance(sid, str) and sid else self.id

    def fork(self, count: int = 1) -> List["Sandbox"]:
        """Make ``count`` running clones of this (running or paused) sandbox:
        each its own id and network identity, with the same memory,
        processes, files, env and metadata; a running sandbox keeps running.
        All or nothing: PlanLimitError (``concurrency_limit``) if the plan
        cannot run them all, and none is made; PlanLimitError
        (``fork_limit``) over the plan's ``max_fork``. Not retried."""
        out = self._client.json("POST", sandbox_path(self.id, "/fork"), json_body={"count": count})
        data = out.get("data") if isinstance(out, dict) else None
        return [type(self)(d, self._client) for d in (data or []) if isinstance(d, dict)]

    def terminate(self) -> None:
        """End the sandbox (idempotent); its record stays in the history."""
        self._set_fields(self._client.json("DELETE", sandbox_path(self.id)))


class ExecStream:
    """A running command's output, as an iterator of ExecChunk. After the
    iteration ends, ``result`` holds the exit code and duration. Use it as a
    context manager (or call ``close``) to release it when not iterating to
    the end."""

    def __init__(self, client: Client, path: str, body: Dict[str, Any], extra_timeout: float) -> None:
        self._client = client
        self._path = path
        self._body = body
        self._extra = extra_timeout
        self._resp: Union[httpx.Response, RawResponse, None] = None
        self._lines: Optional[Iterator[str]] = None
        self._bytes: Optional[Iterator[Union[bytes, memoryview]]] = None  # the binary framing
        self._pending: List[ExecChunk] = []
        self._state = StreamState()

    @property
    def result(self) -> Optional[ExecResult]:
        """How the command ended, once the iteration has ended."""
        return self._state.result

    def __iter__(self) -> ExecStream:
        return self

    def __next__(self) -> ExecChunk:
        # The last read may complete several chunks and the exit at once:
        # those chunks are still to be returned.
        if self._state.done and not self._pending:
            raise StopIteration
        if self._lines is None and self._bytes is None:
            self._resp = self._client.stream_output("POST", self._path, json_body=self._body,
                                                    extra_timeout=self._extra, accept=EXEC_FRAMES)
            self._state.request_id = self._resp.headers.get("x-request-id")
            if is_framed(self._resp):
                # The decoder copies what it keeps: the own client's pieces
                # can stay in its read buffer.
                self._bytes = self._resp.iter_views() if isinstance(self._resp, RawResponse) else self._resp.iter_bytes()
            else:
                self._lines = self._resp.iter_lines()
        try:
            while self._bytes is not None:
                if self._pending:
                    return self._pending.pop(0)
                if self._state.done:
                    self.close()
                    self._state.raise_if_failed()
                    raise StopIteration
                data: Union[bytes, memoryview, None]
                try:
                    data = next(self._bytes)
                except StopIteration:
                    data = None
                except httpx.TransportError as e:
                    raise _transport_error(e, "POST", self._path) from None
                self._pending.extend(self._state.feed_bytes(data))
            assert self._lines is not None
            while True:
                try:
                    line = next(self._lines)
                except StopIteration:
                    line = None
                except httpx.TransportError as e:
                    raise _transport_error(e, "POST", self._path) from None
                chunk = self._state.feed(line)
                if chunk is not None:
                    return chunk
                if self._state.done:
                    self.close()
                    self._state.raise_if_failed()
                    raise StopIteration
        except BaseException:
            self.close()
            raise

    def wait(self) -> ExecResult:
        """Discard the output not yet read and return how the command ended."""
        for _ in self:
            pass
        if self._state.result is None:
            raise OrkestrError("exec stream closed before the command ended", code="stream_closed")
        return self._state.result

    def close(self) -> None:
        """Stop reading (the command itself runs on to its end or timeout)."""
        if not self._state.done:
            self._state.done = True
        self._pending.clear()
        if self._resp is not None:
            self._resp.close()

    def __enter__(self) -> ExecStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Files(FileCalls):
    """Files inside a sandbox; paths are absolute paths inside it."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sbx = sandbox

    def _path(self, suffix: str) -> str:
        return sandbox_path(self._sbx.id, suffix)

    def write(self, path: str, content: str, *, user: Optional[str] = None) -> None:
        """Write text (UTF-8), replacing the file and creating parent directories."""
        self.write_bytes(path, content.encode("utf-8"), user=user)

    def write_bytes(self, path: str, data: Union[bytes, bytearray, memoryview], *, user: Optional[str] = None) -> None:
        """Write bytes, replacing the file and creating parent directories."""
        self._sbx.client.request("PUT", self._path("/files"), params=file_params(path, user), content=bytes(data))

    def read_bytes(self, path: str, *, user: Optional[str] = None) -> bytes:
        return self._sbx.client.request("GET", self._path("/files"), params=file_params(path, user)).content

    def read(self, path: str, encoding: str = "utf-8", *, user: Optional[str] = None) -> str:
        """The file as text; UnicodeDecodeError if it is not (use read_bytes)."""
        return self.read_bytes(path, user=user).decode(encoding)

    def list(self, path: str, *, user: Optional[str] = None) -> List[FileEntry]:
        """The entries of the directory at ``path``, sorted by name."""
        out = self._sbx.client.json("GET", self._path("/files/list"), params=file_params(path, user))
        return [FileEntry._from(e) for e in (out.get("entries") or []) if isinstance(e, dict)]

    def write_stream(self, path: str, data: Union[BinaryIO, Iterable[bytes]], *, user: Optional[str] = None) -> None:
        """Stream a binary file object or an iterable of bytes into the file
        at ``path`` without holding it in memory (written to a temporary name
        and renamed into place when complete). Not retried."""
        self._sbx.client.request("PUT", self._path("/files"), params=file_params(path, user), content=_chunks(data))

    def read_to(self, path: str, out: BinaryIO, *, user: Optional[str] = None) -> int:
        """Stream the file at ``path`` into the binary file object ``out``
        without holding it in memory; returns the bytes copied."""
        return _copy_out(self._sbx.client.stream("GET", self._path("/files"), params=file_params(path, user)), out)

    def write_archive(self, dir: str, archive: Union[bytes, BinaryIO, Iterable[bytes]]) -> Dict[str, Any]:
        """Extract a tar archive (plain, gzip or zstd) into the directory
        ``dir`` (created if missing), streamed. Modes and symlinks are kept;
        entries that are absolute, climb out with "..", lead out through a
        symlink or are device nodes are refused (OrkestrError with code
        ``invalid_archive``). Returns {"path", "entries", "bytes"}. Not retried."""
        body = archive if isinstance(archive, bytes) else _chunks(archive)
        out = self._sbx.client.json("PUT", self._path("/files/archive"), params=file_params(dir), content=body)
        return out if isinstance(out, dict) else {}

    def read_archive_to(self, dir: str, out: BinaryIO, compression: Optional[str] = None) -> int:
        """Stream the directory ``dir`` as a tar archive (``compression``
        "gzip" or "zstd", default none) into ``out``; returns its size."""
        params = {**file_params(dir), **({"compression": compression} if compression else {})}
        return _copy_out(self._sbx.client.stream("GET", self._path("/files/archive"), params=params), out)

    def delete(self, path: str, *, user: Optional[str] = None) -> None:
        """Delete the file, or the directory with everything in it."""
        self._sbx.client.request("DELETE", self._path("/files"), params=file_params(path, user))


def _copy_out(resp: httpx.Response, out: BinaryIO) -> int:
    n = 0
    try:
        # As they arrive: re-chunking to a fixed size (iter_bytes(n))
        # copies every byte once more and doubled the CPU of a download.
        for b in resp.iter_bytes():
            out.write(b)
            n += len(b)
    except httpx.TransportError as e:
        raise _transport_error(e, "GET", resp.request.url.path) from None
    finally:
        resp.close()
    return n


def _chunks(data: Union[BinaryIO, Iterable[bytes]]) -> Iterator[bytes]:
    """The body of a streamed upload, in pieces of up to 1 MiB."""
    read = getattr(data, "read", None)
    if read is not None:
        while True:
            b = read(1 << 20)
            if not b:
                return
            yield b
    else:
        for b in data:
            yield bytes(b)
