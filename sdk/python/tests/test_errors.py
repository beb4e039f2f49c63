"""Every error class provoked for real against a real server."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Callable, List, Tuple

import pytest

from orkestr import (
    APIConnectionError,
    APITimeoutError,
    AsyncClient,
    AsyncSandbox,
    AuthError,
    Client,
    ExecTimeout,
    NetworkPolicyError,
    OrkestrError,
    PlanLimitError,
    RateLimitError,
    Sandbox,
    SandboxNotFound,
    SandboxNotReady,
    SnapshotCapReached,
)
from conftest import ClientFactory, PYTHON_TEMPLATE, SHELL_TEMPLATE, Server
from helpers import network_unsupported

MISSING_ID = "sbx_" + "0" * 26


def test_auth_errors(clients: ClientFactory, server: Server) -> None:
    bad = clients(api_key="ork_" + "x" * 43, base_url=server.url)
    with pytest.raises(AuthError) as ei:
        Sandbox.limits(client=bad)
    e = ei.value
    assert e.status == 401 and e.code == "unauthenticated" and e.request_id and e.request_id.startswith("req_")
    assert isinstance(e, OrkestrError)
    read_only = clients(api_key=server.new_key("readers", "free", "sandboxes:read"), base_url=server.url)
    assert Sandbox.limits(client=read_only).plan == "free"
    with pytest.raises(AuthError) as ei:
        Sandbox.create(template=SHELL_TEMPLATE, client=read_only)
    assert ei.value.status == 403 and ei.value.code == "insufficient_scope"
    assert ei.value.required_scope == "sandboxes:write"
    with pytest.raises(OrkestrError) as no_key:
        Client(api_key="  ")
    assert no_key.value.code == "no_api_key" and "ORKESTR_API_KEY" in str(no_key.value)


@pytest.mark.asyncio
async def test_auth_error_async(server: Server) -> None:
    async with AsyncClient(api_key="ork_" + "y" * 43, base_url=server.url) as bad:
        with pytest.raises(AuthError) as ei:
            await AsyncSandbox.limits(client=bad)
    assert ei.value.status == 401


def test_plan_limits_snapshot_cap_not_found_not_ready(clients: ClientFactory, server: Server) -> None:
    tiny = clients(api_key=server.new_key("tiny", "tiny"), base_url=server.url)
    with pytest.raises(PlanLimitError) as pe:
        Sandbox.create(template=SHELL_TEMPLATE, size="medium", client=tiny)
    assert pe.value.code == "size_not_allowed" and pe.value.status == 402
    assert pe.value.details["allowed_sizes"] == ["small"]
    assert not isinstance(pe.value, SnapshotCapReached)

    a = Sandbox.create(template=SHELL_TEMPLATE, client=tiny)
    b = None
    try:
        with pytest.raises(PlanLimitError) as pe:
            Sandbox.create(template=SHELL_TEMPLATE, client=tiny)
        assert pe.value.code == "concurrency_limit" and pe.value.details["max_concurrent"] == 1
        a.pause()
        b = Sandbox.create(template=SHELL_TEMPLATE, client=tiny)
        with pytest.raises(SnapshotCapReached) as se:
            b.pause()
        assert isinstance(se.value, PlanLimitError) and se.value.cap == 1
        assert se.value.code == "snapshot_cap_reached" and se.value.request_id

        # Resuming a over the concurrency limit (b runs) is a PlanLimitError too.
        with pytest.raises(PlanLimitError) as pe:
            Sandbox.resume(a.id, client=tiny)
        assert pe.value.code == "concurrency_limit"

        # Not ready: a paused sandbox cannot run commands or move files.
        with pytest.raises(SandboxNotReady) as nr:
            a.exec("true")
        assert nr.value.sandbox_status == "paused" and nr.value.status == 409
        with pytest.raises(SandboxNotReady):
            a.files.write("/workspace/x", "y")
        with pytest.raises(SandboxNotReady):
            list(a.exec_stream("true"))

        # Not found: no such id, a malformed id, another account's sandbox.
        for sid in (MISSING_ID, "../../limits", "sbx_lower"):
            with pytest.raises(SandboxNotFound) as nf:
                Sandbox.get(sid, client=tiny)
            assert nf.value.status == 404 and nf.value.code == "sandbox_not_found"
        with pytest.raises(SandboxNotFound):
            Sandbox.get(a.id, api_key=server.key, base_url=server.url)
        with pytest.raises(SandboxNotFound):
            Sandbox.resume(MISSING_ID, client=tiny)
    finally:
        a.terminate()
        if b is not None:
            b.terminate()
    # Terminated: not ready for commands either.
    with pytest.raises(SandboxNotReady) as nr:
        a.exec("true")
    assert nr.value.sandbox_status == "terminated"


@pytest.mark.asyncio
async def test_not_found_and_not_ready_async(server: Server) -> None:
    async with AsyncClient(api_key=server.key, base_url=server.url) as c:
        with pytest.raises(SandboxNotFound):
            await AsyncSandbox.get(MISSING_ID, client=c)
        sbx = await AsyncSandbox.create(template=SHELL_TEMPLATE, client=c)
        await sbx.terminate()
        with pytest.raises(SandboxNotReady) as nr:
            await sbx.exec("true")
        assert nr.value.sandbox_status == "terminated"
        with pytest.raises(SandboxNotReady):
            async for _ in sbx.exec_stream("true"):
                pass


def test_exec_timeout_and_other_api_errors(env: Server) -> None:
    with Sandbox.with_temp(template=SHELL_TEMPLATE) as sbx:
        start = time.monotonic()
        with pytest.raises(ExecTimeout) as te:
            sbx.exec("echo partial; echo oops >&2; sleep 30", timeout_seconds=1)
        assert time.monotonic() - start < 15
        e = te.value
        assert e.status == 408 and e.code == "exec_timeout" and e.stdout == "partial\n" and e.stderr == "oops\n"
        assert e.duration_ms >= 1000 and e.request_id
        chunks = []
        with pytest.raises(ExecTimeout) as te:
            for c in sbx.exec_stream("echo streamed; sleep 30", timeout_seconds=1):
                chunks.append(c.data)
        assert chunks == ["streamed\n"] and te.value.status == 408 and te.value.duration_ms >= 1000
        # The sandbox still works after a timeout.
        assert sbx.exec("echo ok").stdout == "ok\n"

        # Other API errors are OrkestrError with the API's code.
        cases: List[Tuple[Callable[[], object], str, int]] = [
            (lambda: sbx.files.read("/workspace"), "invalid_path", 400),
            (lambda: sbx.files.read("/etc/../etc/passwd"), "invalid_path", 400),
            (lambda: sbx.files.delete("/"), "invalid_path", 400),
            (lambda: sbx.files.list("/nonexistent-dir"), "file_not_found", 404),
            (lambda: sbx.exec("true", cwd="/does/not/exist"), "invalid_request", 400),
            (lambda: sbx.exec("true", timeout_seconds=0), "invalid_request", 400),
            (lambda: Sandbox.create(template="no-such-template"), "unknown_template", 400),
            (lambda: Sandbox.create(template=SHELL_TEMPLATE, region="mars1"), "unknown_region", 400),
            (lambda: Sandbox.create(template=SHELL_TEMPLATE, env={"BAD NAME": "secret-value"}), "invalid_request", 400),
            (lambda: Sandbox.create(template="python-3.12-bare"), "unavailable", 503),
        ]
        for call, code, status in cases:
            with pytest.raises(OrkestrError) as oe:
                call()
            assert (oe.value.code, oe.value.status) == (code, status), oe.value
            assert type(oe.value) is OrkestrError and oe.value.request_id
            assert "secret-value" not in str(oe.value) + repr(oe.value)
    with pytest.raises(ValueError):
        sbx.files.read("")
    with pytest.raises(ValueError, match="UTF-8"):
        sbx.exec("cat", stdin=b"\xff\xfe")


def test_rate_limit(clients: ClientFactory, server: Server) -> None:
    key = server.new_key("slowpoke", "slow", "sandboxes:write")
    no_retry = clients(api_key=key, base_url=server.url, max_retries=0)
    err = None
    for _ in range(20):
        try:
            Sandbox.limits(client=no_retry)
        except RateLimitError as e:
            err = e
            break
    assert err is not None, "20 requests at a 2/s, burst-3 plan were never limited"
    assert err.status == 429 and err.code == "rate_limited" and 0 < err.retry_after <= 2 and err.request_id
    # Not idempotent: a create is never retried, so it fails at once.
    retrying = clients(api_key=key, base_url=server.url)
    for _ in range(5):
        try:
            Sandbox.limits(client=no_retry)
        except RateLimitError:
            break
    with pytest.raises(RateLimitError):
        Sandbox.create(template=SHELL_TEMPLATE, client=retrying)
    # Idempotent calls wait out Retry-After and succeed.
    start = time.monotonic()
    for _ in range(8):
        assert Sandbox.limits(client=retrying).plan == "slow"
    assert time.monotonic() - start >= 1.5  # 8 calls at 2/s after the burst was spent


@pytest.mark.asyncio
async def test_rate_limit_async(server: Server) -> None:
    key = server.new_key("slowpoke2", "slow", "sandboxes:read")
    async with AsyncClient(api_key=key, base_url=server.url, max_retries=0) as no_retry, \
            AsyncClient(api_key=key, base_url=server.url) as retrying:
        with pytest.raises(RateLimitError):
            for _ in range(20):
                await AsyncSandbox.limits(client=no_retry)
        for _ in range(5):
            assert (await AsyncSandbox.limits(client=retrying)).plan == "slow"


def test_connection_errors_and_timeouts(clients: ClientFactory, server: Server) -> None:
    import socket

    # Nothing listens: refused, retried, then APIConnectionError.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = clients(api_key=server.key, base_url=f"http://127.0.0.1:{port}", retry_budget=1)
    with pytest.raises(APIConnectionError) as ce:
        Sandbox.limits(client=c)
    assert ce.value.code == "connection_error" and server.key not in str(ce.value)
    # Something accepts and never answers: the client's timeout.
    with socket.socket() as lsn:
        lsn.bind(("127.0.0.1", 0))
        lsn.listen(8)
        c = clients(api_key=server.key, base_url=f"http://127.0.0.1:{lsn.getsockname()[1]}", timeout=0.5,
                   max_retries=1)
        start = time.monotonic()
        with pytest.raises(APITimeoutError) as te:
            Sandbox.limits(client=c)
        assert time.monotonic() - start < 5 and te.value.code == "timeout"


def test_network_policy_error(env: Server) -> None:
    """API.md: a command that exits non-zero after the policy blocked a
    connection raises NetworkPolicyError carrying the result."""
    try:
        sbx = Sandbox.create(template=PYTHON_TEMPLATE, network="restricted")
    except OrkestrError as e:
        if network_unsupported(e):
            pytest.skip(f"this server does not offer network=restricted yet: {e}")
        raise
    probe = ("python3 -c 'import socket,sys; s=socket.socket(); s.settimeout(3)\n"
             "try:\n s.connect((\"169.254.169.254\", 80))\nexcept OSError as e:\n print(e); sys.exit(1)'")
    try:
        with pytest.raises(NetworkPolicyError) as ne:
            sbx.exec(probe)
        npe = ne.value
        assert isinstance(npe, OrkestrError) and npe.result.exit_code != 0
        assert any(b.host == "169.254.169.254" and b.port == 80 for b in npe.blocked_connections)
        with pytest.raises(NetworkPolicyError):
            for _ in sbx.exec_stream(probe):
                pass
        # A command that succeeds is not an error even with blocked connections.
        res = sbx.exec(probe.replace("sys.exit(1)", "sys.exit(0)"))
        assert res.exit_code == 0
    finally:
        sbx.terminate()


def test_usage_exhausted(clients: ClientFactory, server: Server) -> None:
    """API.md: once the month's GB-hours are used up, create raises
    PlanLimitError usage_exhausted with resets_at."""
    c = clients(api_key=server.new_key("metered", "meter"), base_url=server.url)
    limits = Sandbox.limits(client=c)
    assert limits.usage_gb_hours_included == 0.0001
    with Sandbox.with_temp(template=SHELL_TEMPLATE, client=c) as sbx:
        sbx.exec("timeout 2 sh -c 'while :; do :; done'")
    # The meter writes every 3 s and at every terminate (docs/api.md).
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        limits = Sandbox.limits(client=c)
        if limits.usage_gb_hours_used >= limits.usage_gb_hours_included:
            break
        time.sleep(0.5)
    else:
        pytest.skip(f"this server does not meter usage yet (usage_gb_hours_used={limits.usage_gb_hours_used} "
                    "after a sandbox ran for 2 s)")
    with pytest.raises(PlanLimitError) as pe:
        Sandbox.create(template=SHELL_TEMPLATE, client=c)
    e = pe.value
    assert e.code == "usage_exhausted" and e.status == 402
    assert e.resets_at is not None and e.resets_at == limits.usage_resets_at
    assert e.resets_at > datetime.now(timezone.utc)
