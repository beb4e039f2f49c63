"""Exec output streams against a real orkestrd and real gVisor sandboxes:
every byte value byte-exact across chunk boundaries, output without a final
newline, stdout/stderr order, the exit code, and a 0.5 GiB stream read
slowly (back-pressure: the command waits, no memory piles up)."""

from __future__ import annotations

import time
from typing import Iterable, List, Tuple

from orkestr import Sandbox
from conftest import SHELL_TEMPLATE, Server


def printf(values: Iterable[int]) -> str:
    """A shell printf of these byte values, every one as an octal escape."""
    return "printf '" + "".join(f"\\{b:03o}" for b in values) + "'"


def rss_mib(status: str) -> int:
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise AssertionError(f"no VmRSS in {status!r}")


def test_every_byte_value_no_newline_order_and_exit_code(env: Server) -> None:
    with Sandbox.with_temp(template=SHELL_TEMPLATE) as sbx:
        # All 256 values on stdout in three writes, reversed on stderr.
        cmd = "; sleep 0.3; ".join(printf(r) for r in (range(0, 100), range(100, 195), range(195, 256)))
        cmd += "; " + printf(range(255, -1, -1)) + " >&2"
        out, err = b"", b""
        for c in sbx.exec_stream(cmd):
            if c.stream == "stdout":
                out += c.raw
            else:
                err += c.raw
        assert out == bytes(range(256))
        assert err == bytes(range(255, -1, -1))

        # 4 MiB of 0..255 repeated, written 1000 bytes at a time and cut
        # wherever the frames happen to fall.
        sbx.exec(printf(range(256)) + " > /tmp/b; for i in $(seq 14); do cat /tmp/b /tmp/b > /tmp/b2; mv /tmp/b2 /tmp/b; done")
        st = sbx.exec_stream("dd if=/tmp/b bs=1000 status=none")
        got = b"".join(c.raw for c in st)
        assert got == bytes(range(256)) * (1 << 14)
        assert st.result is not None and st.result.exit_code == 0

        # No final newline, and the exit code of the command.
        st = sbx.exec_stream("printf 'no newline'; printf 'on stderr either' >&2; exit 7")
        chunks = list(st)
        assert b"".join(c.raw for c in chunks if c.stream == "stdout") == b"no newline"
        assert "".join(c.data for c in chunks if c.stream == "stderr") == "on stderr either"
        assert st.result is not None and st.result.exit_code == 7
        assert sbx.exec_stream("exit 3").wait().exit_code == 3

        # stdout and stderr in the order they were written.
        order: List[Tuple[str, str]] = []
        for c in sbx.exec_stream("for i in 1 2 3; do echo out$i; sleep 0.3; echo err$i >&2; sleep 0.3; done"):
            if order and order[-1][0] == c.stream:
                order[-1] = (c.stream, order[-1][1] + c.data)
            else:
                order.append((c.stream, c.data))
        want = [(s, ("out" if s == "stdout" else "err") + f"{i}\n") for i in (1, 2, 3) for s in ("stdout", "stderr")]
        assert order == want


PATTERN = b"0123456789abcde\n"


def test_half_gib_read_slowly_back_pressure(env: Server) -> None:
    mib = 512
    big = PATTERN * ((2 << 20) // len(PATTERN) + 2)
    with Sandbox.with_temp(template=SHELL_TEMPLATE) as sbx:
        cmd = (f"i=0; while [ $i -lt {mib} ]; do yes 0123456789abcde | head -c 1048576; "
               "i=$((i+1)); echo $i > /tmp/progress; done")
        server_status = f"/proc/{env.proc.pid}/status"
        with sbx.exec_stream(cmd, timeout_seconds=600) as st:
            it = iter(st)
            first = next(it)
            n = 0

            def check(raw: bytes) -> None:
                nonlocal n
                off = n % len(PATTERN)
                assert raw == big[off:off + len(raw)], f"wrong bytes at offset {n}"
                n += len(raw)

            check(first.raw)
            with open(server_status) as f:
                server0 = rss_mib(f.read())
            agent0 = rss_mib(sbx.exec("cat /proc/1/status").stdout)

            # The reader stalls: the command must stall too, early. On a
            # loaded host the buffers in between may take a while to fill,
            # so it is stalled once two readings 2 s apart agree (30 s at most).
            time.sleep(3)
            p1 = sbx.exec("cat /tmp/progress").stdout
            deadline = time.monotonic() + 30
            while True:
                time.sleep(2)
                p2 = sbx.exec("cat /tmp/progress").stdout
                if p1 == p2 or time.monotonic() > deadline:
                    break
                p1 = p2
            assert p1 == p2 and int(p2) < 128, f"with the reader stalled the command went on: {p1!r} then {p2!r} MiB"
            with open(server_status) as f:
                server_grew = rss_mib(f.read()) - server0
            agent_grew = rss_mib(sbx.exec("cat /proc/1/status").stdout) - agent0
            assert server_grew < 64, f"orkestrd grew by {server_grew} MiB while the reader stalled"
            assert agent_grew < 64, f"the agent grew by {agent_grew} MiB while the reader stalled"

            # Read the rest slowly: all of it arrives, byte-exact.
            for c in it:
                check(c.raw)
                time.sleep(0.001)
            assert n == mib << 20
            assert st.result is not None and st.result.exit_code == 0
