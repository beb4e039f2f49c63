"""The data plane against a real orkestrd: exec output byte-exact through
the binary framing (sync and async), streamed files, directory archives and
a hostile archive refused."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import tarfile
import tempfile

import pytest

from orkestr import AsyncSandbox, OrkestrError, Sandbox
from conftest import SHELL_TEMPLATE, Server

NOT_UTF8 = r"printf '\377\376\000abc\303'; sleep 0.2; printf '\342\202'; sleep 0.2; printf '\254 end'"
NOT_UTF8_BYTES = b"\xff\xfe\x00abc\xc3\xe2\x82\xac end"


def test_exec_stream_bytes_files_and_archives(env: Server) -> None:
    with Sandbox.with_temp(template=SHELL_TEMPLATE) as sbx:
        chunks = list(sbx.exec_stream(NOT_UTF8))
        assert b"".join(c.raw for c in chunks) == NOT_UTF8_BYTES
        assert "".join(c.data for c in chunks) == "\ufffd\ufffd\x00abc\ufffd\u20ac end"

        # 20 MB, every byte in order.
        n = 0
        for c in sbx.exec_stream("head -c 20000000 /dev/zero | tr '\\0' a"):
            assert c.raw == b"a" * len(c.raw)
            n += len(c.raw)
        assert n == 20_000_000

        # Streamed upload and download, byte-exact; the empty file too.
        data = os.urandom(8 << 20)
        sbx.files.write_stream("/workspace/s.bin", io.BytesIO(data))
        out = io.BytesIO()
        assert sbx.files.read_to("/workspace/s.bin", out) == len(data)
        assert hashlib.sha256(out.getvalue()).digest() == hashlib.sha256(data).digest()
        sbx.files.write_stream("/workspace/empty", iter([]))
        assert sbx.files.read_bytes("/workspace/empty") == b""

        # A tree up as tar.gz, down as tar.gz: modes and links kept.
        with tempfile.TemporaryDirectory() as src:
            os.makedirs(f"{src}/d")
            with open(f"{src}/d/a", "wb") as f:
                f.write(b"hi")
            os.chmod(f"{src}/d/a", 0o750)
            os.symlink("a", f"{src}/d/l")
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w:gz") as tf:
                tf.add(f"{src}/d", arcname="d")
            x = sbx.files.write_archive("/workspace/tree", buf.getvalue())
            assert (x["entries"], x["bytes"]) == (3, 2)
        # Content read back, not stat's size: see "What does not work yet".
        res = sbx.exec("stat -c %a /workspace/tree/d/a; cat /workspace/tree/d/a; echo; readlink /workspace/tree/d/l")
        assert res.stdout == "750\nhi\na\n"
        back = io.BytesIO()
        sbx.files.read_archive_to("/workspace/tree", back, compression="gzip")
        with tarfile.open(fileobj=io.BytesIO(back.getvalue()), mode="r:gz") as tf:
            members = {m.name: m for m in tf.getmembers()}
        assert members["d/l"].issym() and members["d/l"].linkname == "a"
        assert members["d/a"].mode & 0o777 == 0o750

        # Hostile: a name that climbs out, and a device node.
        for name, typ in (("../../etc/evil", tarfile.REGTYPE), ("null", tarfile.CHRTYPE)):
            evil = io.BytesIO()
            with tarfile.open(fileobj=evil, mode="w") as tf:
                ti = tarfile.TarInfo(name)
                ti.type = typ
                tf.addfile(ti, io.BytesIO(b"") if typ == tarfile.REGTYPE else None)
            with pytest.raises(OrkestrError) as ei:
                sbx.files.write_archive("/workspace/tree", evil.getvalue())
            assert ei.value.code == "invalid_archive" and ei.value.status == 400
        assert sbx.exec("ls /etc/evil /workspace/tree/null 2>&1; true").stdout.count("No such file") == 2


def test_async_exec_stream_bytes(env: Server) -> None:
    async def main() -> None:
        sbx = await AsyncSandbox.create(template=SHELL_TEMPLATE)
        try:
            raw = b""
            async for c in sbx.exec_stream(NOT_UTF8):
                raw += c.raw
            assert raw == NOT_UTF8_BYTES
        finally:
            await sbx.terminate()

    asyncio.run(main())
