"""The client against a real server (secrets, base URL handling) and, for
answers a healthy orkestrd never gives (503 on a read, proxy pages, broken
streams), against httpx.MockTransport."""

from __future__ import annotations

import json
import logging
import time
from typing import Callable, Dict, List

import httpx
import pytest

import orkestr
from orkestr import AsyncClient, AsyncSandbox, Client, OrkestrError, RateLimitError, Sandbox
from conftest import ClientFactory, SHELL_TEMPLATE, Server

SECRET_ENV = "sk-very-secret-env-value"
KEY = "ork_" + "K" * 43


def test_no_secret_in_repr_str_or_log(clients: ClientFactory, env: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    c = clients(api_key=env.key, base_url=env.url)
    texts: List[str] = [repr(c), str(c)]
    sbx = Sandbox.create(template=SHELL_TEMPLATE, env={"TOKEN": SECRET_ENV}, client=c)
    try:
        texts += [repr(sbx), str(sbx), repr(sbx.__dict__.get("metadata")), repr(sbx.env_keys)]
        res = sbx.exec("true")
        texts += [repr(res)]
        for call in (lambda: sbx.exec("sleep 5", timeout_seconds=1, env={"X": SECRET_ENV}),
                     lambda: Sandbox.create(template="nope", env={"T": SECRET_ENV}, client=c),
                     lambda: Sandbox.limits(client=clients(api_key=env.key + "x", base_url=env.url))):
            with pytest.raises(OrkestrError) as ei:
                call()
            texts += [str(ei.value), repr(ei.value), repr(ei.value.details), repr(ei.value.args)]
        list(sbx.exec_stream("echo hi", env={"Y": SECRET_ENV}))
    finally:
        sbx.terminate()
    texts.append(caplog.text)
    assert any("HTTP Request" in r.getMessage() for r in caplog.records), "httpx logged nothing at DEBUG"
    for t in texts:
        assert env.key not in t and SECRET_ENV not in t, t
    assert "api_key=<redacted>" in repr(c)
    c.close()


def test_env_and_base_url_forms(env: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    for form in (env.url, env.url + "/", env.url + "/v1", env.url + "/v1/"):
        monkeypatch.setenv("ORKESTR_BASE_URL", form)
        assert Sandbox.limits().plan == "team"
    monkeypatch.delenv("ORKESTR_BASE_URL")
    assert Client(api_key=KEY).base_url == orkestr.DEFAULT_BASE_URL == "https://api.orkestr.eu"
    monkeypatch.delenv("ORKESTR_API_KEY")
    with pytest.raises(OrkestrError, match="ORKESTR_API_KEY"):
        Sandbox.limits()
    with pytest.raises(OrkestrError) as ei:
        Client(api_key=KEY, base_url="ftp://user:hunter2@example.com")
    assert "hunter2" not in str(ei.value) and ei.value.code == "invalid_base_url"
    # User info in a base URL is dropped, never sent.
    assert Client(api_key=KEY, base_url="http://u:hunter2@127.0.0.1:1/x/").base_url == "http://127.0.0.1:1/x"
    with pytest.raises(ValueError):
        Sandbox.limits(client=Client(api_key=KEY), api_key=KEY)


# --- answers a healthy server does not give -------------------------------

Handler = Callable[[httpx.Request], httpx.Response]


def mock_client(handler: Handler, **kw: float) -> Client:
    return Client(api_key=KEY, base_url="http://orkestr.test", http_client=httpx.Client(
        transport=httpx.MockTransport(handler)), **kw)  # type: ignore[arg-type]


def api_error(status: int, code: str, headers: Dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, headers={"X-Request-Id": "req_MOCK", **(headers or {})},
                          json={"error": {"code": code, "message": "m", "details": {}}})


LIMITS = {"plan": "free", "allowed_sizes": ["small"], "max_concurrent": 1, "snapshot_cap": 1,
          "usage_gb_hours_used": 0, "usage_gb_hours_included": 10, "usage_cpu_hours_used": 0,
          "usage_cpu_hours_included": 2, "usage_resets_at": "2026-12-01T00:00:00.000Z", "sizes": []}


def test_503_retry_after_honoured_on_reads_only() -> None:
    calls: List[float] = []

    def handler(req: httpx.Request) -> httpx.Response:
        assert req.headers["authorization"] == "Bearer " + KEY
        calls.append(time.monotonic())
        if len(calls) == 1:
            return api_error(503, "no_capacity", {"Retry-After": "1"})
        return httpx.Response(200, json=LIMITS)

    assert Sandbox.limits(client=mock_client(handler)).plan == "free"
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.95

    posts: List[str] = []

    def post_handler(req: httpx.Request) -> httpx.Response:
        posts.append(req.method)
        return api_error(503, "no_capacity", {"Retry-After": "0"})

    with pytest.raises(OrkestrError) as ei:
        Sandbox.create(template="t", client=mock_client(post_handler))
    assert posts == ["POST"] and ei.value.status == 503 and ei.value.code == "no_capacity"

    # A Retry-After beyond the retry budget ends the retries at once.
    n: List[int] = []

    def long_wait(req: httpx.Request) -> httpx.Response:
        n.append(1)
        return api_error(429, "rate_limited", {"Retry-After": "60"})

    start = time.monotonic()
    with pytest.raises(RateLimitError) as re_:
        Sandbox.limits(client=mock_client(long_wait))
    assert len(n) == 1 and time.monotonic() - start < 1 and re_.value.retry_after == 60


def test_hostile_answers() -> None:
    def proxy(req: httpx.Request) -> httpx.Response:
        return httpx.Response(502, content=b"<html>bad gateway" + b"x" * 10000)

    with pytest.raises(OrkestrError) as ei:
        Sandbox.limits(client=mock_client(proxy))
    assert ei.value.status == 502 and ei.value.code == "" and len(str(ei.value)) < 400

    for body in (b"not json", b"[]", b'{"error": "x"}', b'{"error": {"code": 5}}'):
        def bad(req: httpx.Request, body: bytes = body) -> httpx.Response:
            return httpx.Response(400, content=body)
        with pytest.raises(OrkestrError) as ei:
            Sandbox.limits(client=mock_client(bad))
        assert ei.value.status == 400

    def not_json_ok(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"<html>")

    with pytest.raises(OrkestrError) as ei:
        Sandbox.limits(client=mock_client(not_json_ok))
    assert ei.value.code == "invalid_response"

    sandbox = {"id": "sbx_01HX", "status": "running", "created_at": "2026-05-01T10:00:00.123456789Z",
               "expires_at": "2026-05-01T12:00:00+02:00", "metadata": {"a": "b"}, "env_keys": ["K"]}
    streams = {
        "truncated": b'{"type":"stdout","data":"a"}\n',
        "garbage": b'{"type":"stdout","data":"a"}\n{not json\n',
        "unknown": b'{"type":"stdout","data":"a"}\n{"type":"progress"}\n[1]\n\n'
                   b'{"type":"exit","exit_code":0,"duration_ms":5,"blocked_connections":null}\n',
        "blocked": b'{"type":"exit","exit_code":1,"duration_ms":5,"blocked_connections":[{"host":"h","port":443}]}\n',
        "error": b'{"type":"error","error":{"code":"sandbox_not_ready","message":"m","details":{"status":"error"}}}\n',
    }
    which: List[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("/exec/stream"):
            return httpx.Response(200, headers={"X-Request-Id": "req_S"}, content=streams[which[-1]])
        return httpx.Response(200, json=sandbox)

    c = mock_client(handler)
    sbx = Sandbox.get("sbx_01HX", client=c)
    assert sbx.created_at is not None and sbx.created_at.microsecond == 123456
    assert sbx.expires_at is not None and sbx.expires_at.utcoffset() is not None
    assert sbx.expires_at.hour == 12 and sbx.expires_at.utcoffset().total_seconds() == 7200  # type: ignore[union-attr]

    which.append("truncated")
    with pytest.raises(OrkestrError) as ei:
        list(sbx.exec_stream("x"))
    assert ei.value.code == "stream_incomplete" and ei.value.request_id == "req_S"
    which.append("garbage")
    with pytest.raises(OrkestrError) as ei:
        list(sbx.exec_stream("x"))
    assert ei.value.code == "invalid_response"
    which.append("unknown")
    st = sbx.exec_stream("x")
    assert [c.data for c in st] == ["a"] and st.result is not None and st.result.blocked_connections == []
    which.append("blocked")
    with pytest.raises(orkestr.NetworkPolicyError) as ne:
        sbx.exec_stream("x").wait()
    assert str(ne.value.blocked_connections[0]) == "h:443" and ne.value.result.exit_code == 1
    which.append("error")
    with pytest.raises(orkestr.SandboxNotReady) as nr:
        list(sbx.exec_stream("x"))
    assert nr.value.status == 409 and nr.value.sandbox_status == "error"


@pytest.mark.asyncio
async def test_async_retry_and_hostile() -> None:
    calls: List[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(req.method)
        if len(calls) == 1:
            return api_error(429, "rate_limited", {"Retry-After": "0"})
        if req.url.path == "/v1/sandboxes":
            page = {"data": [{"id": f"sbx_{len(calls)}", "status": "running"}],
                    "next_cursor": None if len(calls) >= 4 else f"c{len(calls)}"}
            return httpx.Response(200, content=json.dumps(page).encode())
        return httpx.Response(200, json=LIMITS)

    async with AsyncClient(api_key=KEY, base_url="http://orkestr.test",
                           http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler))) as c:
        ids = [s.id async for s in AsyncSandbox.list(client=c)]
    assert calls == ["GET"] * 4 and ids == ["sbx_2", "sbx_3", "sbx_4"]
