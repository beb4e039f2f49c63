"""The README's examples against a real server: the asyncio API."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from contextlib import redirect_stdout
from typing import AsyncIterator, List

import pytest
import pytest_asyncio

import orkestr
from orkestr import AsyncClient, AsyncSandbox, ExecChunk, ExecTimeout, OrkestrError, SandboxNotReady
from conftest import PYTHON_TEMPLATE, SHELL_TEMPLATE, Server
from helpers import network_unsupported


@pytest_asyncio.fixture
async def aenv(env: Server) -> AsyncIterator[Server]:
    yield env
    # The default clients of this test's event loop go with it.
    await orkestr.aclose_default_clients()


def test_quick_start_asyncio_run(env: Server) -> None:
    """The README's asyncio quick start, run by asyncio.run as written."""
    out = io.StringIO()

    async def main() -> None:
        async with AsyncSandbox.with_temp(template=PYTHON_TEMPLATE) as sbx:
            await sbx.files.write("/workspace/main.py", "print(sum(range(1_000_000)))")
            result = await sbx.exec("python /workspace/main.py")
            print(result.stdout)  # 499999500000
        assert sbx.status == "terminated"
        await orkestr.aclose_default_clients()

    with redirect_stdout(out):
        asyncio.run(main())
    assert out.getvalue() == "499999500000\n\n"


@pytest.mark.asyncio
async def test_with_temp_terminates_on_exception_and_cancel(aenv: Server) -> None:
    ids: List[str] = []
    with pytest.raises(KeyError):
        async with AsyncSandbox.with_temp(template=SHELL_TEMPLATE) as sbx:
            ids.append(sbx.id)
            raise KeyError("boom")

    async def body() -> None:
        async with AsyncSandbox.with_temp(template=SHELL_TEMPLATE) as sbx:
            ids.append(sbx.id)
            await sbx.exec("sleep 30")

    task = asyncio.ensure_future(body())
    while len(ids) < 2:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for i in ids:
        assert (await AsyncSandbox.get(i)).status == "terminated"


@pytest.mark.asyncio
async def test_async_surface(aenv: Server) -> None:
    async with AsyncClient(api_key=aenv.key, base_url=aenv.url + "/v1/") as client:
        assert client.base_url == aenv.url
        limits = await AsyncSandbox.limits(client=client)
        assert limits.plan == "team" and "large" in limits.allowed_sizes
        assert any(t.name == SHELL_TEMPLATE and t.built for t in await AsyncSandbox.templates(client=client))
        sbx = await AsyncSandbox.create(
            template=PYTHON_TEMPLATE, size="small", network="off", timeout_seconds=600,
            env={"OPENAI_API_KEY": "sk-async"}, metadata={"agentRun": "r_123"}, region="fsn1", client=client,
        )
        try:
            assert sbx.status == "running" and sbx.env_keys == ["OPENAI_API_KEY"]
            result = await sbx.exec("python3 -c 'import os,sys; print(os.environ[\"OPENAI_API_KEY\"]); sys.exit(3)'",
                                    timeout_seconds=60)
            assert (result.stdout, result.exit_code) == ("sk-async\n", 3) and result.duration_ms > 0

            # Streaming: each chunk arrives while the command runs (the
            # command waits for a file written after each chunk arrived).
            got: List[ExecChunk] = []
            out, err = io.StringIO(), io.StringIO()
            saved = sys.stdout, sys.stderr
            sys.stdout, sys.stderr = out, err
            try:
                stream = sbx.exec_stream(
                    "for i in 1 2 3; do echo o$i; while [ ! -e /tmp/go$i ]; do sleep 0.02; done; "
                    "echo e$i >&2; done", timeout_seconds=60)
                async for chunk in stream:
                    got.append(chunk)
                    if chunk.stream == "stdout":
                        sys.stdout.write(chunk.data)
                        await sbx.files.write(f"/tmp/go{chunk.data.strip()[1:]}", "")
                    else:
                        sys.stderr.write(chunk.data)
            finally:
                sys.stdout, sys.stderr = saved
            assert out.getvalue() == "o1\no2\no3\n" and err.getvalue() == "e1\ne2\ne3\n"
            assert [c.data for c in got if c.stream == "stdout"] == ["o1\n", "o2\n", "o3\n"] and len(got) == 6
            assert stream.result is not None and stream.result.exit_code == 0

            # Concurrency: two commands at once on one sandbox; the first
            # ends only once the second has run.
            r1, r2 = await asyncio.gather(
                sbx.exec("while [ ! -e /tmp/flag ]; do sleep 0.02; done; echo a", timeout_seconds=30),
                sbx.exec("sleep 0.2; touch /tmp/flag; echo b"))
            assert (r1.stdout, r2.stdout) == ("a\n", "b\n")

            # A stream timing out raises ExecTimeout from the iteration.
            before: List[str] = []
            with pytest.raises(ExecTimeout) as ei:
                async for chunk in sbx.exec_stream("echo before; sleep 10", timeout_seconds=1):
                    before.append(chunk.data)
            assert before == ["before\n"] and ei.value.code == "exec_timeout" and ei.value.duration_ms >= 1000

            # Files.
            await sbx.files.write("/workspace/data.json", '{"x": 1}')
            await sbx.files.write_bytes("/workspace/blob.bin", bytes([0, 1, 2]))
            assert await sbx.files.read("/workspace/data.json") == '{"x": 1}'
            assert await sbx.files.read_bytes("/workspace/blob.bin") == b"\x00\x01\x02"
            entries = await sbx.files.list("/workspace")
            assert [(e.name, e.is_dir, e.size) for e in entries] == [("blob.bin", False, 3), ("data.json", False, 8)]
            await sbx.files.delete("/workspace/blob.bin")
            with pytest.raises(OrkestrError) as fe:
                await sbx.files.read_bytes("/workspace/blob.bin")
            assert fe.value.code == "file_not_found"

            m = await sbx.metrics()
            assert m.cpu is not None and m.samples and m.samples[0].t.tzinfo is not None
            m2 = await sbx.metrics(since=m.samples[-1].t)
            assert all(s.t > m.samples[-1].t for s in m2.samples)

            # Pause + resume by id, from "another worker" (the env's key).
            sandbox_id = await sbx.pause()
            assert sandbox_id == sbx.id and sbx.status == "paused"
            with pytest.raises(SandboxNotReady):
                await sbx.files.read("/workspace/data.json")
            resumed = await AsyncSandbox.resume(sandbox_id)
            assert resumed.status == "running"
            assert await resumed.files.read("/workspace/data.json") == '{"x": 1}'
            await resumed.update(metadata={})
            assert resumed.metadata == {}
            await sbx.refresh()
            assert sbx.status == "running"
        finally:
            await sbx.terminate()
        assert sbx.status == "terminated"


@pytest.mark.asyncio
async def test_async_pause_readme(aenv: Server) -> None:
    try:
        sbx = await AsyncSandbox.create(template="node-22", network="restricted")
    except OrkestrError as e:
        if not network_unsupported(e):
            raise
        sbx = await AsyncSandbox.create(template="node-22", network="off")
    try:
        sandbox_id = await sbx.pause()
        resumed = await AsyncSandbox.resume(sandbox_id, api_key=os.environ["ORKESTR_API_KEY"])
        assert resumed.status == "running"
    finally:
        await sbx.terminate()


@pytest.mark.asyncio
async def test_async_list_iterates_all_pages(aenv: Server) -> None:
    made = await asyncio.gather(*(AsyncSandbox.create(template=SHELL_TEMPLATE) for _ in range(3)))
    try:
        seen = [s.id async for s in AsyncSandbox.list(page_size=1)]
        assert len(seen) == len(set(seen)) >= 3 and all(m.id in seen for m in made)
        running = []
        async for sbx in AsyncSandbox.list(status="running"):
            running.append(sbx.id)
            assert sbx.status == "running"
        assert {m.id for m in made} <= set(running)
    finally:
        await asyncio.gather(*(m.terminate() for m in made))
