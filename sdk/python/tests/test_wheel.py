"""The distribution: a wheel and an sdist build with the standard tooling;
the wheel installs into a fresh virtualenv (the oldest supported Python
found here) and works against the real server; its types reach mypy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path


from conftest import Server

ROOT = Path(__file__).resolve().parents[1]


def _oldest_python() -> str:
    """Python 3.9 when this machine has it (the oldest supported version),
    else the interpreter running the tests."""
    cands = [os.path.expanduser("~/.pyenv/versions/3.9.18/bin/python3.9"), shutil.which("python3.9") or ""]
    for cand in cands:
        # A pyenv shim exists even where it cannot run: try each one.
        if cand and subprocess.run([cand, "-c", "pass"], capture_output=True).returncode == 0:
            return cand
    return sys.executable


def _run(*args: str, env: "dict[str, str] | None" = None) -> str:
    out = subprocess.run(list(args), capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, f"{' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


SCRIPT = """
import asyncio, sys, orkestr
from orkestr import AsyncSandbox, Sandbox
print(sys.version_info[:2], orkestr.__version__)
assert Sandbox.limits().plan == "team"
async def main() -> None:
    limits = await AsyncSandbox.limits()
    assert limits.usage_resets_at.tzinfo is not None
    await orkestr.aclose_default_clients()
asyncio.run(main())
try:
    Sandbox.get("sbx_" + "0" * 26)
except orkestr.SandboxNotFound as e:
    print("not found", e.status)
"""

TYPED_USE = """
from orkestr import Sandbox, ExecResult
def run(sbx: Sandbox) -> int:
    r: ExecResult = sbx.exec("true")
    return r.exit_code
x: int = Sandbox.limits().plan  # a str: mypy must reject this line
"""


def test_wheel_builds_installs_and_imports(env: Server, tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT))
    wheels = list(dist.glob("orkestr-*-py3-none-any.whl"))
    sdists = list(dist.glob("orkestr-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(dist.iterdir())
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "orkestr/py.typed" in names and "orkestr/__init__.py" in names
    assert not any(".venv" in n or "tests/" in n for n in names)
    with tarfile.open(sdists[0]) as t:
        members = t.getnames()
    assert any(m.endswith("src/orkestr/py.typed") for m in members)
    assert not any("/.venv/" in m for m in members)
    meta = zipfile.ZipFile(wheels[0]).read(
        next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Requires-Python: >=3.9" in meta and "Requires-Dist: httpx" in meta
    # Apache-2.0 (PEP 639): the SPDX expression and the licence text ship
    # in the wheel and the sdist, identical to the repository's LICENSE.
    assert "License-Expression: Apache-2.0" in meta, meta
    lic = next(n for n in names if n.endswith(".dist-info/licenses/LICENSE"))
    assert zipfile.ZipFile(wheels[0]).read(lic) == (ROOT.parent.parent / "LICENSE").read_bytes()
    assert any(n.endswith(".dist-info/licenses/NOTICE") for n in names)
    assert any(m.endswith("/LICENSE") for m in members), members

    python = _oldest_python()
    venv = tmp_path / "venv"
    _run(python, "-m", "venv", str(venv))
    vpy = str(venv / "bin" / "python")
    _run(vpy, "-m", "pip", "install", "-q", str(wheels[0]))
    out = _run(vpy, "-c", SCRIPT, env={**os.environ, "PYTHONPATH": ""})
    assert "not found 404" in out, out
    if python != sys.executable:
        assert "(3, 9)" in out

    # The installed package's types reach mypy (py.typed): a wrong use is
    # reported against the installed wheel, not ignored as untyped.
    use = tmp_path / "use.py"
    use.write_text(TYPED_USE)
    res = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--python-executable", vpy, "--no-incremental",
         "--python-version", "3.10", str(use)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    assert 'Incompatible types in assignment (expression has type "str", variable has type "int")' in res.stdout
    assert res.stdout.count("error:") == 1, res.stdout
