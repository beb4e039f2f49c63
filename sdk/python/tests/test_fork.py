"""fork(count=n) against a real server: clones with the parent's memory."""

from __future__ import annotations

import asyncio
import time

import pytest

from orkestr import AsyncSandbox, PlanLimitError, Sandbox
from conftest import PYTHON_TEMPLATE, Server

# A value that exists only in a Python process's memory; the process writes
# it to /workspace/v whenever the file is missing.
HOLDER = ("nohup python3 -c 'import os,random,time\n"
          "v=str(random.random())\n"
          "while True:\n"
          "  os.path.exists(\"/workspace/v\") or open(\"/workspace/v\",\"w\").write(v)\n"
          "  time.sleep(0.05)' >/dev/null 2>&1 &")


def _read_again(sbx: Sandbox) -> str:
    """Remove /workspace/v and read what the holder process writes anew."""
    if sbx.files.exists("/workspace/v"):
        sbx.files.delete("/workspace/v")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if sbx.files.exists("/workspace/v"):
            v = sbx.files.read("/workspace/v")
            if v:
                return v
        time.sleep(0.1)
    raise AssertionError(f"{sbx.id}: the holder process did not write its value")


def test_fork_clones_memory_and_diverge(env: Server) -> None:
    sbx = Sandbox.create(template=PYTHON_TEMPLATE)
    clones = []
    try:
        sbx.files.write("/workspace/keep.txt", "parent")
        sbx.exec(HOLDER)
        v = _read_again(sbx)
        clones = sbx.fork(count=3)
        assert len(clones) == 3 and len({c.id for c in clones} | {sbx.id}) == 4
        for c in clones:
            assert isinstance(c, Sandbox) and c.status == "running"
            assert _read_again(c) == v
            c.files.write("/workspace/keep.txt", c.id)
        for c in clones:
            assert c.files.read("/workspace/keep.txt") == c.id
        assert sbx.files.read("/workspace/keep.txt") == "parent"
        assert _read_again(sbx) == v
        assert Sandbox.limits().max_fork == 10
        with pytest.raises(PlanLimitError) as e:
            sbx.fork(count=11)
        assert e.value.code == "fork_limit" and e.value.status == 402
        with pytest.raises(Exception) as bad:
            sbx.fork(count=0)
        assert getattr(bad.value, "status", None) == 400
    finally:
        for c in clones:
            c.terminate()
        sbx.terminate()


def test_async_fork(env: Server) -> None:
    async def main() -> None:
        sbx = await AsyncSandbox.create(template=PYTHON_TEMPLATE)
        try:
            await sbx.files.write("/workspace/keep.txt", "parent")
            await sbx.pause()
            clones = await sbx.fork(count=2)
            assert [type(c) for c in clones] == [AsyncSandbox, AsyncSandbox]
            for c in clones:
                assert await c.files.read("/workspace/keep.txt") == "parent"
                await c.terminate()
        finally:
            await sbx.terminate()

    asyncio.run(main())
