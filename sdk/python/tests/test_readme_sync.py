"""The README's examples, as written (python-3.11/debian-12 for the
templates not built here), against a real server: the synchronous API."""

from __future__ import annotations

import io
import os
import sys
from contextlib import redirect_stdout
from datetime import datetime, timezone

import pytest

import orkestr
from orkestr import ExecChunk, OrkestrError, Sandbox, SandboxNotReady
from conftest import PYTHON_TEMPLATE, SHELL_TEMPLATE, Server
from helpers import network_unsupported


def test_quick_start(env: Server) -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        with Sandbox.with_temp(template=PYTHON_TEMPLATE) as sbx:
            sbx.files.write("/workspace/main.py", "print(sum(range(1_000_000)))")
            result = sbx.exec("python /workspace/main.py")
            print(result.stdout)  # 499999500000
            print(result.duration_ms)  # ~120
    lines = out.getvalue().split("\n")
    assert lines[0] == "499999500000"
    assert int(lines[2]) > 0
    assert sbx.status == "terminated"
    assert Sandbox.get(sbx.id).status == "terminated"


def test_with_temp_terminates_on_exception(env: Server) -> None:
    class Boom(Exception):
        pass

    holder = []
    with pytest.raises(Boom):
        with Sandbox.with_temp(template=SHELL_TEMPLATE) as sbx:
            holder.append(sbx)
            raise Boom()
    assert Sandbox.get(holder[0].id).status == "terminated"


def test_create_limits_metrics_exec_files_stream(env: Server) -> None:
    sbx = Sandbox.create(
        template=PYTHON_TEMPLATE,
        size="small",
        network="off",
        timeout_seconds=600,
        env={"OPENAI_API_KEY": "sk-test-value"},
        metadata={"agentRun": "r_123"},
        region="fsn1",
        api_key=os.environ["ORKESTR_API_KEY"],
    )
    try:
        assert sbx.id.startswith("sbx_") and len(sbx.id) == 30
        assert sbx.status == "running"
        assert sbx.env_keys == ["OPENAI_API_KEY"]
        assert sbx.metadata == {"agentRun": "r_123"}
        assert sbx.size == "small" and sbx.cpu == 0.5 and sbx.memory_mb == 512
        assert sbx.created_at is not None and sbx.created_at.tzinfo is not None
        assert sbx.expires_at is not None and sbx.expires_at > datetime.now(timezone.utc)
        assert "sk-test-value" not in repr(sbx)

        limits = Sandbox.limits()
        assert limits.plan == "team"
        assert limits.allowed_sizes == ["small", "medium", "large"]
        assert "medium" in limits.allowed_sizes
        assert limits.max_concurrent == 50
        assert limits.usage_gb_hours_included == 2000.0
        assert limits.usage_cpu_hours_included == 500.0
        assert limits.usage_resets_at.tzinfo is not None and limits.usage_resets_at.day == 1
        assert [(s.size, s.cpu, s.memory_mb, s.allowed) for s in limits.sizes] == [
            ("small", 0.5, 512, True), ("medium", 2.0, 4096, True), ("large", 4.0, 8192, True)]

        # The env reaches commands; run.
        result = sbx.exec('echo "$OPENAI_API_KEY"; echo err >&2; exit 7', timeout_seconds=60)
        assert (result.stdout, result.stderr, result.exit_code) == ("sk-test-value\n", "err\n", 7)
        assert isinstance(result.duration_ms, int)
        assert sbx.exec("cat", stdin="from stdin", cwd="/tmp").stdout == "from stdin"
        assert sbx.exec("pwd", cwd="/tmp").stdout == "/tmp\n"
        assert sbx.exec("echo $X", env={"X": "per-call"}).stdout == "per-call\n"

        # Metrics: a busy loop shows in the samples.
        sbx.exec("timeout 2 sh -c 'while :; do :; done'")
        m = sbx.metrics()
        assert m.sandbox_status == "running" and m.sample_interval_seconds == 1
        assert m.cpu is not None and m.memory is not None
        assert m.cpu.cores == 0.5 and m.memory.limit_bytes == 512 * 1024 * 1024
        assert m.memory.usage_bytes > 0 and m.lifetime.cpu_seconds > 0
        assert m.samples and all(s.t.tzinfo is not None for s in m.samples)
        assert max(s.cpu_percent for s in m.samples) >= 25
        since = m.samples[-1].t
        m2 = sbx.metrics(since=since)
        assert all(s.t > since for s in m2.samples) and len(m2.samples) < len(m.samples)
        with pytest.raises(ValueError, match="timezone-aware"):
            sbx.metrics(since=datetime.now())

        # Files, as in the README.
        sbx.files.write("/workspace/data.json", '{"x": 1}')
        sbx.files.write_bytes("/workspace/blob.bin", bytes([0, 1, 2]))
        sbx.exec("echo out > /workspace/out.txt")
        content = sbx.files.read("/workspace/out.txt")
        raw = sbx.files.read_bytes("/workspace/blob.bin")
        assert content == "out\n" and raw == b"\x00\x01\x02" and isinstance(raw, bytes)
        entries = {e.name: e for e in sbx.files.list("/workspace")}
        assert set(entries) >= {"data.json", "blob.bin", "out.txt"}
        assert entries["blob.bin"].size == 3 and not entries["blob.bin"].is_dir
        assert entries["blob.bin"].mode == 0o644 and entries["blob.bin"].path == "/workspace/blob.bin"
        mod = entries["blob.bin"].modified_at
        assert mod is not None and mod.tzinfo is not None
        sbx.files.delete("/workspace/out.txt")
        with pytest.raises(OrkestrError) as ei:
            sbx.files.read("/workspace/out.txt")
        assert ei.value.code == "file_not_found" and ei.value.status == 404
        big = os.urandom(3 << 20)
        sbx.files.write_bytes("/workspace/big.bin", big)
        assert sbx.files.read_bytes("/workspace/big.bin") == big
        sbx.files.write("/workspace/ünï/çødé.txt", "ünïcødé ✓")
        assert sbx.files.read("/workspace/ünï/çødé.txt") == "ünïcødé ✓"
        assert [e.name for e in sbx.files.list("/workspace/ünï")] == ["çødé.txt"]

        # Streaming, as in the README; chunks arrive while the command runs.
        err, out = io.StringIO(), io.StringIO()
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        try:
            for chunk in sbx.exec_stream("echo first; sleep 1; echo second >&2"):
                if chunk.stream == "stdout":
                    sys.stdout.write(chunk.data)
                else:
                    sys.stderr.write(chunk.data)
        finally:
            sys.stdout, sys.stderr = saved
        assert (out.getvalue(), err.getvalue()) == ("first\n", "second\n")

        # Chunks arrive while the command runs, shown without timing: each
        # step of the command waits for a file the test writes only after
        # it has received the previous chunk. Buffered output would stall
        # the command until its timeout.
        gate = "for i in 1 2 3; do echo tick$i; while [ ! -e /tmp/go$i ]; do sleep 0.02; done; done; exit 4"
        stream = sbx.exec_stream(gate, timeout_seconds=60)
        got = []
        for chunk in stream:
            got.append(chunk)
            sbx.files.write(f"/tmp/go{len(got)}", "")
        assert got == [ExecChunk("stdout", f"tick{i}\n") for i in (1, 2, 3)]
        assert stream.result is not None and stream.result.exit_code == 4
        assert stream.result.stdout == "" and stream.result.duration_ms > 0

        # Stopping early releases the stream; the sandbox stays usable.
        with sbx.exec_stream("yes | head -c 10000000") as s:
            first = next(iter(s))
            assert first.stream == "stdout"
        assert sbx.exec("echo still").stdout == "still\n"
        assert sbx.exec_stream("echo x; exit 2").wait().exit_code == 2

        sbx.update(timeout_seconds=120, metadata={"k": "v"})
        assert sbx.metadata == {"k": "v"} and sbx.timeout_seconds == 120
    finally:
        sbx.terminate()
    assert sbx.status == "terminated" and sbx.terminated_at is not None
    sbx.terminate()  # idempotent


def test_pause_resume_terminate(env: Server) -> None:
    try:
        sbx = Sandbox.create(template="node-22", network="restricted")
    except OrkestrError as e:
        if not network_unsupported(e):
            raise
        # This server does not offer network "restricted" yet.
        sbx = Sandbox.create(template="node-22", network="off")
    try:
        sbx.exec("echo kept > /workspace/state; node -e 'console.log(1+1)'")
        sandbox_id = sbx.pause()
        assert sandbox_id == sbx.id and sbx.status == "paused"
        with pytest.raises(SandboxNotReady) as ei:
            sbx.exec("true")
        assert ei.value.sandbox_status == "paused" and ei.value.status == 409
        pm = sbx.metrics()
        assert pm.cpu is None and pm.memory is None and pm.samples == []
        assert pm.sandbox_status == "paused" and pm.lifetime.running_seconds >= 0
        # ... from any worker, with a fresh client:
        orkestr.close_default_clients()
        resumed = Sandbox.resume(sandbox_id)
        assert resumed.status == "running" and resumed.id == sandbox_id
        assert resumed.files.read("/workspace/state") == "kept\n"
    finally:
        sbx.terminate()
    assert Sandbox.get(sandbox_id).status == "terminated"


def test_list_iterates_all_pages(env: Server) -> None:
    made = [Sandbox.create(template=SHELL_TEMPLATE) for _ in range(3)]
    try:
        seen = [s.id for s in Sandbox.list(page_size=1)]
        assert len(seen) == len(set(seen)) >= 3
        assert all(m.id in seen for m in made)
        running = []
        for sbx in Sandbox.list(status="running"):
            assert sbx.created_at is not None
            running.append(sbx.id)
        assert {m.id for m in made} <= set(running)
        assert all(s.status == "running" for s in Sandbox.list(status="running", page_size=2))
        # Newest first.
        assert [i for i in seen if i in {m.id for m in made}] == [m.id for m in reversed(made)]
    finally:
        for m in made:
            m.terminate()


def test_templates(env: Server) -> None:
    names = {t.name: t for t in Sandbox.templates()}
    assert names[SHELL_TEMPLATE].built is True
    assert names["python-3.12"].default is True
