"""Background processes, users and the extended file calls, sync and
asyncio, as the README shows them, against a real server."""

from __future__ import annotations

import asyncio
import io
from contextlib import redirect_stdout
from typing import List

import pytest

from orkestr import AsyncSandbox, Detached, OrkestrError, Sandbox
from conftest import PYTHON_TEMPLATE, SHELL_TEMPLATE, Server


def test_readme_background_processes(env: Server) -> None:
    with Sandbox.with_temp(template=PYTHON_TEMPLATE) as sbx:
        out = io.StringIO()
        with redirect_stdout(out):
            cat = sbx.processes.start("cat")
            cat.send_stdin("hello from stdin\n")
            cat.close_stdin()
            for chunk in cat.output(replay=True):
                print(chunk.data, end="")          # hello from stdin
            print(cat.running, cat.exit_code)      # False 0

            server = sbx.processes.start("python3 -u -m http.server 8000")
            print(server.pid)                      # its pid inside the sandbox
            same = sbx.processes.get(server.pid)   # or sbx.processes.list()
            same.kill("TERM")
            same.wait(timeout=30)
            print(same.exit_code, same.signal)     # 143 15
        lines = out.getvalue().split("\n")
        assert lines[0] == "hello from stdin"
        assert lines[1] == "False 0"
        assert int(lines[2]) == server.pid > 0
        assert lines[3] == "143 15"
        assert [p.pid for p in sbx.processes.list()] == [cat.pid, server.pid]
        # bytes to stdin, an unknown pid, a closed stdin
        echo = sbx.processes.start("cat")
        echo.send_stdin(b"\x00\x01bytes\n")
        echo.close_stdin()
        assert "".join(c.data for c in echo.output(replay=True)) == "\x00\x01bytes\n"
        with pytest.raises(OrkestrError) as e:
            sbx.processes.get(1)
        assert e.value.code == "process_not_found" and e.value.status == 404
        with pytest.raises(OrkestrError) as e:
            echo.send_stdin("late")
        assert e.value.code == "process_stdin_closed"


def test_readme_users_and_files(env: Server) -> None:
    with Sandbox.with_temp(template=SHELL_TEMPLATE) as sbx:
        out = io.StringIO()
        with redirect_stdout(out):
            print(sbx.exec("id -un", user="user").stdout)   # user
            proc = sbx.processes.start("id -u", user="user")

            d = sbx.files.mkdir("/workspace/app/src", user="user")
            print(d.type, d.owner, oct(d.mode))            # dir user 0o755
            sbx.files.write("/workspace/app/src/a.py", "x = 1\n")
            sbx.files.rename("/workspace/app/src/a.py", "/workspace/app/src/b.py")
            print(sbx.files.exists("/workspace/app/src/a.py"))  # False
            print(sbx.files.stat("/workspace/app/src/b.py").size)  # 6

            with sbx.files.watch("/workspace/app", recursive=True) as events:
                sbx.exec("mkdir /workspace/app/logs && echo ok > /workspace/app/logs/run.txt")
                for ev in events:
                    print(ev.type, ev.path)                # create logs, create logs/run.txt, ...
                    if ev.path == "logs/run.txt":
                        break
        lines = out.getvalue().split("\n")
        assert lines[:4] == ["user", "", "dir user 0o755", "False"]
        assert lines[4] == "6"
        assert lines[5] == "create logs"
        assert lines[6].endswith(" logs/run.txt")
        assert proc.wait(timeout=30).exit_code == 0
        assert "".join(c.data for c in proc.output(replay=True)) == "1000\n"
        with pytest.raises(OrkestrError) as e:
            sbx.files.rename("/workspace/app/src/b.py", "/etc/b.py", user="user")
        assert e.value.code == "permission_denied"
        with pytest.raises(OrkestrError) as e:
            sbx.files.mkdir("/workspace/app/src", parents=False)
        assert e.value.code == "file_exists"


def test_async_processes_watch_and_pause(env: Server) -> None:
    async def main() -> None:
        sbx = await AsyncSandbox.create(template=SHELL_TEMPLATE)
        try:
            proc = await sbx.processes.start("for i in 1 2 3; do echo tick $i; done; sleep 600")
            got: List[str] = []
            async for chunk in proc.output(replay=True):
                got.append(chunk.data)
                if "".join(got) == "tick 1\ntick 2\ntick 3\n":
                    break
            async with sbx.files.watch("/workspace") as events:
                await sbx.exec("touch /workspace/x")
                async for ev in events:
                    assert (ev.type, ev.path) == ("create", "x")
                    break
            st = await sbx.files.stat("/workspace/x", user="user")
            assert st.type == "file" and st.owner == "root"
            assert await sbx.files.exists("/workspace/x")
            # A pause ends an attached output with Detached; the process
            # survives with its pid.
            attached = asyncio.ensure_future(_drain(proc))
            await asyncio.sleep(1)
            await sbx.pause()
            with pytest.raises(Detached):
                await attached
            sbx = await AsyncSandbox.resume(sbx.id)
            again = await sbx.processes.get(proc.pid)
            assert again.running
            await again.kill("KILL")
            assert (await again.wait()).signal == 9
        finally:
            await sbx.terminate()

    asyncio.run(main())


async def _drain(proc: object) -> None:
    async for _ in proc.output():  # type: ignore[attr-defined]
        pass
