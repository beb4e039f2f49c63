"""Terminals (Sandbox.terminal, AsyncSandbox.terminal) against a real
server: size, resize, typed input, exit status, byte-exact output,
back-pressure, refusals as the SDK's errors; and the README's example."""

from __future__ import annotations

import asyncio
import io
import time
import tracemalloc
from contextlib import redirect_stdout
from typing import Iterator

import pytest

import orkestr

from orkestr import AsyncSandbox, AsyncTerminal, OrkestrError, Sandbox, SandboxNotReady, Terminal
from conftest import SHELL_TEMPLATE, Server


@pytest.fixture
def sbx(env: Server) -> Iterator[Sandbox]:
    s = Sandbox.create(template=SHELL_TEMPLATE)
    try:
        yield s
    finally:
        s.terminate()


def _until(term: Terminal, want: bytes, seen: bytearray) -> None:
    end = time.monotonic() + 30
    for chunk in term:
        seen += chunk
        if want in seen:
            return
        assert time.monotonic() < end, f"never saw {want!r} in {bytes(seen)!r}"
    raise AssertionError(f"the program exited before showing {want!r}: {bytes(seen)!r}")


def test_readme_terminal(sbx: Sandbox) -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        # The README's example, as written.
        with sbx.terminal("bash", rows=24, cols=80) as term:
            term.write("echo $((6*7)); exit 3\r")
            screen = b"".join(term)
            print(b"42" in screen, term.exit.exit_code if term.exit else None)  # True 3
    assert out.getvalue() == "True 3\n"


def test_size_resize_input_and_exit(sbx: Sandbox) -> None:
    with sbx.terminal('stty size; read l; stty size; echo "got $l $V"; exit 7', rows=12, cols=34, env={"V": "v1"}) as term:
        assert term.pid > 1
        seen = bytearray()
        _until(term, b"12 34\r\n", seen)
        term.resize(40, 120)
        term.write(b"line\r")
        for chunk in term:
            seen += chunk
        assert b"40 120\r\ngot line v1" in seen
        assert term.exit is not None and term.exit.exit_code == 7


def test_login_shell_and_ctrl_c(sbx: Sandbox) -> None:
    with sbx.terminal() as term:
        seen = bytearray()
        term.write("pwd; sleep 100\r")
        _until(term, b"/workspace\r\n", seen)
        time.sleep(0.3)
        term.write(b"\x03echo rc-$?\r")
        _until(term, b"rc-130", seen)
        term.write("exit 5\r")
        assert term.wait().exit_code == 5


def test_bytes_exact(sbx: Sandbox) -> None:
    want = bytes([0x1B, 0x5B, 0x33, 0x31, 0x6D, 0x72, 0x1B, 0x5B, 0x30, 0x6D, 0xFF, 0xFE, 0x00, 0x07, 0x1B, 0x5D, 0x30, 0x3B, 0x74, 0x07])
    octal = "".join("\\%03o" % b for b in want)
    with sbx.terminal(f"stty raw -echo; printf '{octal}'") as term:
        assert b"".join(term) == want


def test_nobody_reads_then_reads(sbx: Sandbox) -> None:
    with sbx.terminal("yes 0123456789abcdef") as term:
        time.sleep(1)
        tracemalloc.start()
        time.sleep(3)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 16 << 20, f"{peak} bytes allocated while nobody read"
        n = 0
        for chunk in term:
            n += len(chunk)
            if n > 4 << 20:
                break
        assert n > 4 << 20


def test_refusals(env: Server, sbx: Sandbox) -> None:
    gone = Sandbox.create(template=SHELL_TEMPLATE)
    gone.terminate()
    with pytest.raises(SandboxNotReady):
        gone.terminal()
    with pytest.raises(OrkestrError) as e:
        sbx.terminal(cwd="/no/such/dir")
    assert e.value.code == "invalid_request"
    with pytest.raises(ValueError):
        sbx.terminal(rows=0)
    # Leaving the context manager hangs up: the program goes.
    with sbx.terminal("echo up; sleep 777") as term:
        _until(term, b"up", bytearray())
    end = time.monotonic() + 20
    while "sleep 777" in sbx.exec("cat /proc/[0-9]*/cmdline | tr '\\0' ' '").stdout:
        assert time.monotonic() < end, "the program outlived the hang-up"
        time.sleep(0.1)


def test_async_terminal(env: Server) -> None:
    async def main() -> None:
        sbx = await AsyncSandbox.create(template=SHELL_TEMPLATE)
        try:
            async with await sbx.terminal("stty size; read l; echo got-$l; exit 4", rows=9, cols=99) as term:
                assert isinstance(term, AsyncTerminal) and term.pid > 1
                seen = bytearray()
                async for chunk in term:
                    seen += chunk
                    if b"9 99\r\n" in seen:
                        break
                await term.resize(20, 30)
                await term.write("abc\r")
                async for chunk in term:
                    seen += chunk
                assert b"got-abc" in seen
                assert term.exit is not None and term.exit.exit_code == 4
                assert (await term.wait()).exit_code == 4
        finally:
            await sbx.terminate()
            await orkestr.aclose_default_clients()

    asyncio.run(main())


def test_terminal_and_files_as_user(sbx: Sandbox) -> None:
    sbx.files.write("/root/only-root", "secret")
    with sbx.terminal('echo "id=$(id -u) home=$HOME"; cat /root/only-root || echo cannot-read', user="user") as term:
        screen = b"".join(term)
    assert b"id=1000 home=/home/user\r\n" in screen and b"cannot-read" in screen and b"secret" not in screen
    for call in (lambda: sbx.files.read("/root/only-root", user="user"),
                 lambda: sbx.files.write("/etc/evil", "x", user="user"),
                 lambda: sbx.files.list("/root", user="user"),
                 lambda: sbx.files.delete("/root/only-root", user="user")):
        with pytest.raises(OrkestrError) as e:
            call()
        assert e.value.code == "permission_denied"
    sbx.files.write("/home/user/py/f.txt", "mine", user="user")
    assert sbx.files.stat("/home/user/py/f.txt").uid == 1000
    assert sbx.files.read("/home/user/py/f.txt", user="user") == "mine"
    assert [e.name for e in sbx.files.list("/home/user/py", user="user")] == ["f.txt"]


def test_async_terminal_and_files_as_user(env: Server) -> None:
    async def main() -> None:
        sbx = await AsyncSandbox.create(template=SHELL_TEMPLATE)
        try:
            async with await sbx.terminal("id -u", user="user") as term:
                seen = bytearray()
                async for chunk in term:
                    seen += chunk
            assert b"1000\r\n" in seen
            await sbx.files.write("/home/user/a.txt", "a", user="user")
            assert (await sbx.files.stat("/home/user/a.txt")).uid == 1000
            with pytest.raises(OrkestrError) as e:
                await sbx.files.read_bytes("/etc/shadow", user="user")
            assert e.value.code == "permission_denied"
        finally:
            await sbx.terminate()
            await orkestr.aclose_default_clients()

    asyncio.run(main())
