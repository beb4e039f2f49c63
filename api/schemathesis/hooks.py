"""Schemathesis hooks for orkestrd's contract run.

The catalog of the server under test holds only what is built offline on
the test machines (debian-12); the document's example template
(python-3.12) is an OCI image that is not. A generated create that is
valid by the schema therefore names debian-12, so that positive and
stateful tests get real sandboxes to work on; negative cases are left
exactly as generated.
"""

import io
import json
import socket
import tarfile
import time

import schemathesis
from schemathesis.core.transport import STREAM_CUT_SHORT_ATTRIBUTE

# Endless streams: a watch runs until its directory goes, an attach until
# the process ends. The run reads each for at most this long (what a client
# that stops watching does), then closes the connection, and the server
# ends the stream; what arrived is checked line by line. An archive download
# is read as briefly: schemathesis checks its status and headers, not the
# tar (internal/api and e2e tests read archives whole), and one of / takes
# ten seconds here.
ENDLESS_STREAMS = {"watchFiles", "attachProcess"}
BRIEF_READS = ENDLESS_STREAMS | {"getArchive"}
STREAM_READ_SECONDS = 1.0
BRIEF_TYPES = ("application/x-ndjson", "application/x-tar", "application/gzip", "application/zstd")


def operation_id(operation):  # type: ignore[no-untyped-def]
    return operation.definition.raw.get("operationId")


def _sandbox_ended(response):  # type: ignore[no-untyped-def]
    """Whether the sandbox of response's request is no longer running: a
    download the server aborts because its sandbox ended (expired, paused,
    terminated) mid-transfer is that, by design (docs/api.md), not a
    broken server."""
    import re

    import requests

    req = response.request
    m = re.match(r"(https?://[^/]+)/v1/sandboxes/(sbx_[0-9A-Z]{26})/", req.url)
    if not m:
        return False
    try:
        r = requests.get(f"{m.group(1)}/v1/sandboxes/{m.group(2)}", headers={"Authorization": req.headers.get("Authorization", "")}, timeout=30)
        return r.status_code == 200 and r.json().get("status") != "running"
    except Exception:
        return False


def _read_briefly(response, *args, **kwargs):  # type: ignore[no-untyped-def]
    """A requests response hook: read a stream or a download for at most
    STREAM_READ_SECONDS, keep what arrived (whole lines of a stream) and
    close the connection."""
    ctype = response.headers.get("Content-Type", "")
    if getattr(response, "_contract_read", False) or not ctype.startswith(BRIEF_TYPES):
        return response
    response._contract_read = True
    deadline = time.monotonic() + STREAM_READ_SECONDS
    conn = getattr(response.raw, "connection", None)
    sock = getattr(conn, "sock", None)
    buf = bytearray()
    ended = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if sock is not None:
                sock.settimeout(left)
            chunk = response.raw.read1(64 * 1024, decode_content=True)
            if not chunk:
                ended = True
                break
            buf += chunk
    except Exception as exc:
        # A read that timed out is this run's doing; a transfer the server
        # broke off is a failure unless its sandbox ended meanwhile.
        if not isinstance(exc, (socket.timeout, TimeoutError)) and "timed out" not in str(exc).lower():
            if not _sandbox_ended(response):
                raise
    if not ended:
        if ctype.startswith("application/x-ndjson"):
            del buf[buf.rfind(b"\n") + 1 :]
        # schemathesis's own mark for a stream it cut short (SSE), read
        # back as Response.stream_cut_short by the deserializer.
        setattr(response, STREAM_CUT_SHORT_ATTRIBUTE, True)
        response.raw.close()  # the server sees the client go and ends the stream
    response._content = bytes(buf)
    response._content_consumed = True
    return response


@schemathesis.hook
def before_call(context, case, kwargs):  # type: ignore[no-untyped-def]
    op = operation_id(case.operation)
    if op in BRIEF_READS:
        hooks = kwargs.setdefault("hooks", {}).setdefault("response", [])
        if _read_briefly not in hooks:
            hooks.append(_read_briefly)
        return
    if op != "createSandbox":
        return
    meta = getattr(case, "meta", None)
    mode = getattr(getattr(meta, "generation", None), "mode", None)
    if mode is None or str(mode) != "positive":
        return
    if isinstance(case.body, dict):
        case.body["template"] = "debian-12"
        # Keep the runs short-lived: the server terminates them itself
        # (expiry is part of what is tested) if nothing else does.
        if not isinstance(case.body.get("timeout_seconds"), int) or case.body["timeout_seconds"] > 120:
            case.body["timeout_seconds"] = 120


@schemathesis.deserializer("application/x-ndjson")
def ndjson_stream(ctx, response):  # type: ignore[no-untyped-def]
    """The NDJSON streams, each checked for its structure here; the last
    line is returned for the schema (ExecStreamLine, ProcessOutputLine,
    WatchLine) to check.

    - exec/stream: zero or more output lines, then exactly one exit or error
      line, then the end.
    - a process's output: output and dropped lines, then at most one exit,
      detached or error line, last.
    - a watch: started first, then changes, overflow and limit lines, then
      at most one end, detached or error line, last.
    The endless ones (watch, output) may be cut short by this run
    (_read_briefly): then the final line may be missing."""
    op = operation_id(ctx.operation)
    text = response.content.decode("utf-8")
    cut = bool(getattr(response, "stream_cut_short", False))
    if text and not text.endswith("\n"):
        raise ValueError("the stream does not end with a newline (cut short?)")
    # Only "\n" ends a line: str.splitlines would also split at U+0085,
    # U+2028 and other characters JSON carries unescaped inside strings.
    lines = [json.loads(line) for line in text.split("\n")[:-1]]
    for line in lines:
        if not isinstance(line, dict) or not isinstance(line.get("type"), str):
            raise ValueError(f"a line is not an object with a type: {line!r}")
    types = [line["type"] for line in lines]
    if op == "execStream":
        body, finals = ("stdout", "stderr"), ("exit", "error")
    elif op == "attachProcess":
        body, finals = ("stdout", "stderr", "dropped"), ("exit", "detached", "error")
    elif op == "watchFiles":
        body, finals = ("started", "create", "write", "remove", "rename", "chmod", "overflow", "limit"), ("end", "detached", "error")
        if types and types[0] != "started":
            raise ValueError(f"a watch's first line is not started: {lines[0]!r}")
        if "started" in types[1:]:
            raise ValueError("a watch sent started twice")
    else:
        raise ValueError(f"no NDJSON stream is documented for {op}")
    for i, t in enumerate(types):
        if t in finals and i != len(types) - 1:
            raise ValueError(f"a {t} line is not the last: {lines[i]!r}")
        if t not in finals and t not in body:
            raise ValueError(f"unexpected line in the stream of {op}: {lines[i]!r}")
    for line in lines:
        if line["type"] in ("stdout", "stderr") and not isinstance(line.get("data"), str):
            raise ValueError(f"an output line without data: {line!r}")
    if not types or types[-1] not in finals:
        if not (cut and op in ENDLESS_STREAMS):
            raise ValueError(f"the stream ended without a final line ({' or '.join(finals)})")
        if not lines:
            # Cut before any line (an attach to a silent process): nothing
            # to check against the schema.
            raise NotImplementedError("an endless stream cut short before its first line")
    return lines[-1]


@schemathesis.serializer("application/x-tar")
def tar_body(ctx, value):  # type: ignore[no-untyped-def]
    """PUT …/files/archive takes a tar. A generated string (or bytes)
    becomes one file of a real archive, so that positive cases extract
    something; anything else (negative cases: numbers, objects) is sent as
    its JSON text, which is not an archive and must be refused."""
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogatepass")
    if isinstance(value, (bytes, bytearray)):
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
            info = tarfile.TarInfo("contract-fuzz.txt")
            info.size = len(value)
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(bytes(value)))
        return out.getvalue()
    if value is None:
        return None
    return json.dumps(value).encode("utf-8")


@schemathesis.hook
def filter_failure(context, failure, case, response):  # type: ignore[no-untyped-def]
    """Keep every failure but two documented behaviours: after 20 requests in
    a row with a bad key from one address, the server answers that address
    429 `rate_limited` instead of 401 for a while (docs/api.md, Conventions),
    and the ignored_auth check sends bad keys on purpose (any other 429 is
    kept); and a file a body names is missing (below)."""
    # A missing path named in a body (mkdir's parent without parents,
    # rename's from) is 404 file_not_found right after the sandbox was
    # created: ensure_resource_availability takes it for the sandbox (the
    # only parameter, from the link) missing. It is not; a sandbox that is
    # missing is 404 sandbox_not_found, which is still reported.
    if getattr(failure, "code", "") == "ST302" and response is not None and response.status_code == 404:
        try:
            if response.json()["error"]["code"] == "file_not_found":
                return False
        except Exception:
            pass
    # ignored_auth reports the answer to its own bad-key request in the
    # failure, not in response.
    if getattr(failure, "code", "") == "ST401" and "got `429 Too Many Requests`" in str(getattr(failure, "message", "")):
        return False
    if response is None or response.status_code != 429:
        return True
    try:
        body = response.json()
    except Exception:
        return True
    err = body.get("error", {}) if isinstance(body, dict) else {}
    return not (err.get("code") == "rate_limited" and "missing or invalid API key" in err.get("message", ""))
