"""Request bodies and the exec stream's line protocol, shared by the sync
and async classes."""

from __future__ import annotations

import json
from datetime import datetime
from collections import deque
from typing import Any, Deque, Dict, List, Mapping, Optional, Tuple, Union

from ._errors import STATUS_OF_CODE, NetworkPolicyError, OrkestrError, classify
from ._models import ExecChunk, ExecResult
from ._time import format_time

DEFAULT_EXEC_TIMEOUT = 60
MAX_STDIN = 1 << 20  # what fits in the API's 1 MiB JSON body limit


def create_body(
    template: str,
    size: Optional[str],
    network: Optional[str],
    timeout_seconds: Optional[int],
    env: Optional[Mapping[str, str]],
    metadata: Optional[Mapping[str, str]],
    region: Optional[str],
) -> Dict[str, Any]:
    if not template:
        raise ValueError("orkestr: template is required, e.g. template='python-3.12'")
    body: Dict[str, Any] = {"template": template}
    if size is not None:
        body["size"] = size
    if network is not None:
        body["network"] = network
    if timeout_seconds is not None:
        body["timeout_seconds"] = int(timeout_seconds)
    if env is not None:
        body["env"] = dict(env)
    if metadata is not None:
        body["metadata"] = dict(metadata)
    if region is not None:
        body["region"] = region
    return body


def update_body(timeout_seconds: Optional[int], metadata: Optional[Mapping[str, str]]) -> Dict[str, Any]:
    body: Dict[str, Any] = {}
    if timeout_seconds is not None:
        body["timeout_seconds"] = int(timeout_seconds)
    if metadata is not None:
        body["metadata"] = dict(metadata)
    return body


def exec_body(
    command: str,
    timeout_seconds: Optional[int],
    env: Optional[Mapping[str, str]],
    cwd: Optional[str],
    stdin: Union[str, bytes, None],
) -> Dict[str, Any]:
    body: Dict[str, Any] = {"command": command}
    if timeout_seconds is not None:
        body["timeout_seconds"] = int(timeout_seconds)
    if env is not None:
        body["env"] = dict(env)
    if cwd is not None:
        body["cwd"] = cwd
    if stdin is not None:
        raw = stdin.encode("utf-8") if isinstance(stdin, str) else bytes(stdin)
        if len(raw) > MAX_STDIN:
            raise ValueError("orkestr: stdin is larger than the API's 1 MiB limit; write it to a file instead")
        try:
            body["stdin"] = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("orkestr: stdin is not UTF-8 text; write binary input to a file instead") from None
    return body


def list_params(status: Optional[str], page_size: Optional[int], cursor: Optional[str]) -> Dict[str, str]:
    q: Dict[str, str] = {}
    if status:
        q["status"] = status
    if page_size:
        q["limit"] = str(int(page_size))
    if cursor:
        q["cursor"] = cursor
    return q


def metrics_params(since: Optional[datetime]) -> Optional[Dict[str, str]]:
    return {"since": format_time(since)} if since is not None else None


def file_params(path: str, user: Optional[str] = None) -> Dict[str, str]:
    if not isinstance(path, str) or not path:
        raise ValueError("orkestr: empty file path; give an absolute path inside the sandbox")
    if user is not None:
        return {"path": path, "user": user}
    return {"path": path}


def check_network_policy(res: ExecResult, request_id: Optional[str]) -> None:
    if res.exit_code != 0 and res.blocked_connections:
        raise NetworkPolicyError(res, request_id=request_id)


EXEC_FRAMES = "application/vnd.orkestr.exec-frames"
"""The exec stream's binary-safe framing, asked for in Accept: per frame a
type byte (1 stdout, 2 stderr, 3 exit, 4 error), the payload's length as 4
bytes big-endian, and the payload (output bytes; JSON for exit and error)."""

MAX_FRAME = 16 << 20


def is_framed(resp: Any) -> bool:
    return str(resp.headers.get("content-type", "")).split(";")[0].strip() == EXEC_FRAMES


class FrameDecoder:
    """Splits a byte stream into (type, payload) frames. Received pieces are
    kept as memoryviews and copied out once. The payload of an output frame
    (types 1 and 2) comes out piece by piece as it arrives, never joined (a
    frame of up to 1 MiB usually spans several reads); the JSON of the
    closing events (3 and 4) is joined."""

    def __init__(self) -> None:
        self._parts: Deque[memoryview] = deque()
        self._have = 0
        self._type = -1
        self._need = 5

    def _take(self, n: int) -> bytes:
        parts = self._parts
        self._have -= n
        out: List[memoryview] = []
        while n > 0:
            p = parts[0]
            if len(p) <= n:
                out.append(parts.popleft())
                n -= len(p)
            else:
                out.append(p[:n])
                parts[0] = p[n:]
                n = 0
        return out[0].tobytes() if len(out) == 1 else b"".join(out)

    def feed(self, data: Union[bytes, memoryview]) -> List[Tuple[int, bytes]]:
        """The frames (or output pieces) data completes. data may be a view
        of a buffer its owner reuses once feed returns: what is kept of it
        past the call is copied."""
        if data:
            self._parts.append(memoryview(data))
            self._have += len(data)
        try:
            return self._split()
        finally:
            if isinstance(data, memoryview) and self._parts:
                self._parts = deque(memoryview(p.tobytes()) for p in self._parts)

    def _split(self) -> List[Tuple[int, bytes]]:
        out: List[Tuple[int, bytes]] = []
        while True:
            if self._type < 0:
                if self._have < 5:
                    return out
                h = self._take(5)
                self._type, self._need = h[0], int.from_bytes(h[1:5], "big")
                if self._need > MAX_FRAME:
                    raise OrkestrError(f"the exec stream sent a frame of {self._need} bytes", code="invalid_response")
                if self._need == 0:
                    if self._type not in (1, 2):
                        out.append((self._type, b""))
                    self._type, self._need = -1, 5
            elif self._type in (1, 2):
                if self._have == 0:
                    return out
                k = min(self._have, self._need)
                out.append((self._type, self._take(k)))
                self._need -= k
                if self._need == 0:
                    self._type, self._need = -1, 5
            else:
                if self._have < self._need:
                    return out
                out.append((self._type, self._take(self._need)))
                self._type, self._need = -1, 5


def _utf8_cut(b: bytes) -> int:
    """Where b ends if an incomplete UTF-8 sequence at its end is held back."""
    n = len(b)
    for i in range(1, min(3, n) + 1):
        c = b[n - i]
        if c & 0xC0 != 0x80:  # a start byte (or ASCII)
            need = 2 if c & 0xE0 == 0xC0 else 3 if c & 0xF0 == 0xE0 else 4 if c & 0xF8 == 0xF0 else 1
            return n - i if need > i else n
    return n


class StreamState:
    """Follows one exec stream's NDJSON lines."""

    def __init__(self) -> None:
        self._frames = FrameDecoder()
        # The incomplete UTF-8 sequence at the end of each stream's last
        # chunk, decoded with the next one.
        self._carry = {"stdout": b"", "stderr": b""}
        self.done = False
        self.result: Optional[ExecResult] = None
        self.error: Optional[OrkestrError] = None
        self.request_id: Optional[str] = None

    def feed(self, line: Optional[str]) -> Optional[ExecChunk]:
        """Take the next line (None at the end of the body); return a chunk
        of output, or None with ``done`` set once the command has ended."""
        if line is None:
            self.done = True
            self.error = OrkestrError(
                "the exec stream ended before the command did", code="stream_incomplete",
                request_id=self.request_id,
            )
            return None
        line = line.strip()
        if not line:
            return None
        try:
            ev = json.loads(line)
        except ValueError:
            self.done = True
            self.error = OrkestrError("the exec stream sent a line that is not JSON", code="invalid_response",
                                      request_id=self.request_id)
            return None
        if not isinstance(ev, dict):
            return None
        typ = ev.get("type")
        if typ in ("stdout", "stderr"):
            data = ev.get("data")
            text = data if isinstance(data, str) else ""
            return ExecChunk(stream=str(typ), data=text, raw=text.encode("utf-8", "surrogatepass"))
        return self._event(ev)

    def feed_bytes(self, data: Union[bytes, memoryview, None]) -> List[ExecChunk]:
        """Take the next bytes of a framed stream (None at the end of the
        body); return the chunks of output they complete."""
        if data is None:
            if not self.done:
                self.feed(None)
            return []
        out: List[ExecChunk] = []
        for typ, payload in self._frames.feed(data):
            if typ in (1, 2):
                stream = "stdout" if typ == 1 else "stderr"
                cut = _utf8_cut(payload)
                out.append(ExecChunk(stream, raw=payload, _head=self._carry[stream], _cut=cut))
                self._carry[stream] = payload[cut:]
            elif typ in (3, 4):
                # A character the output ended inside of becomes U+FFFD
                # (its raw bytes came with the chunk before).
                out.extend(ExecChunk(k, raw=b"", _head=v) for k, v in self._carry.items() if v)
                try:
                    ev = json.loads(payload)
                except ValueError:
                    ev = None
                if not isinstance(ev, dict):
                    self.done = True
                    self.error = OrkestrError("the exec stream sent a closing event that is not JSON",
                                              code="invalid_response", request_id=self.request_id)
                    return out
                self._event(ev)
                return out
            # Unknown frame types are skipped, for forward compatibility.
        return out

    def _event(self, ev: Dict[str, Any]) -> Optional[ExecChunk]:
        typ = ev.get("type")
        if typ == "exit":
            self.done = True
            self.result = ExecResult._from({**ev, "stdout": "", "stderr": ""})
            if self.result.exit_code != 0 and self.result.blocked_connections:
                self.error = NetworkPolicyError(self.result, request_id=self.request_id)
            return None
        if typ == "error":
            self.done = True
            raw_err = ev.get("error")
            err: Dict[str, Any] = raw_err if isinstance(raw_err, dict) else {}
            code = _as_str(err.get("code"))
            msg = _as_str(err.get("message"))
            raw_details = err.get("details")
            details: Dict[str, Any] = raw_details if isinstance(raw_details, dict) else {}
            self.error = classify(STATUS_OF_CODE.get(code, 500), code, msg, details, self.request_id)
            return None
        # Unknown event types are skipped, for forward compatibility.
        return None

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error


def _as_str(v: object) -> str:
    return v if isinstance(v, str) else ""
