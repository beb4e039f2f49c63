"""Starts a real orkestrd (real gVisor sandboxes) for the SDK's tests and
stops it afterwards, leaving no sandbox process, mount or directory behind.

Environment: ORKESTR_BIN_DIR (orkestrd, orkestr-agent; default the
repository's bin/), ORKESTR_RUNSC (default bin/runsc), ORKESTR_TEMPLATE_DIR
(default /var/lib/orkestr/templates). Needs root, like the Go e2e tests.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, List

import httpx
import pytest

import orkestr

REPO = Path(__file__).resolve().parents[3]
BIN = Path(os.environ.get("ORKESTR_BIN_DIR", REPO / "bin"))
RUNSC = Path(os.environ.get("ORKESTR_RUNSC", BIN / "runsc"))
TEMPLATE_DIR = Path(os.environ.get("ORKESTR_TEMPLATE_DIR", "/var/lib/orkestr/templates"))
KEY_RE = re.compile(r"ork_[0-9A-Za-z]{43}")

# debian-12 is the smallest template built offline here; python-3.11 stands
# in for the README's python-3.12 (an OCI template not built here).
SHELL_TEMPLATE = "debian-12"
PYTHON_TEMPLATE = "python-3.11"

# Plans the tests provoke errors with, next to the defaults (free, pro,
# team; the bootstrap account is on team).
CONFIG = """\
plans:
  tiny:
    allowed_sizes: [small]
    max_concurrent: 1
    snapshot_cap: 1
    rate_limit: {requests_per_second: 100, burst: 200}
  slow:
    allowed_sizes: [small]
    max_concurrent: 1
    snapshot_cap: 1
    rate_limit: {requests_per_second: 2, burst: 3}
  meter:
    allowed_sizes: [small]
    max_concurrent: 2
    snapshot_cap: 1
    usage_gb_hours_included: 0.0001
    usage_cpu_hours_included: 0.0001
    rate_limit: {requests_per_second: 100, burst: 200}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    key: str
    data_dir: Path
    state_dir: Path
    config: Path
    log: Path
    proc: "subprocess.Popen[bytes]"
    accounts: List[str] = field(default_factory=list)

    def admin(self, *args: str) -> str:
        cmd = [str(BIN / "orkestrd"), "admin", *args, "--data-dir", str(self.data_dir), "--config", str(self.config)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"orkestrd {' '.join(args)}: {out.stderr}{out.stdout}")
        return out.stdout

    def new_key(self, account: str, plan: str = "", scopes: str = "sandboxes:write") -> str:
        """A key of account (created on plan if plan is given)."""
        if plan and account not in self.accounts:
            self.admin("account", "create", account, "--plan", plan)
            self.accounts.append(account)
        out = self.admin("key", "create", "--account", account, "--scopes", scopes)
        last = out.strip().splitlines()[-1] if out.strip() else ""
        if not KEY_RE.fullmatch(last):
            raise RuntimeError(f"key create printed no key as its last line: {out!r}")
        return last

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _processes_under(state_dir: Path) -> List[int]:
    """Pids whose command line mentions the state dir (runsc and its gofers)."""
    needle = str(state_dir).encode()
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            if needle in (p / "cmdline").read_bytes():
                pids.append(int(p.name))
        except OSError:
            continue
    return pids


def _mounts_under(state_dir: Path) -> List[str]:
    prefix = str(state_dir) + "/"
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split(" ")[4]
        if mp.startswith(prefix):
            out.append(mp)
    return sorted(out, key=len, reverse=True)


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    if os.geteuid() != 0:
        pytest.fail("the SDK tests start real gVisor sandboxes and must run as root")
    for need in (BIN / "orkestrd", BIN / "orkestr-agent", RUNSC):
        if not need.exists():
            pytest.fail(f"{need} is missing: run `make build` (and set ORKESTR_RUNSC to a runsc binary)")
    data_dir = Path(tempfile.mkdtemp(prefix="orkpy-data-"))
    state_dir = Path(tempfile.mkdtemp(prefix="orkpy-", dir="/run"))
    config = data_dir / "config.yaml"
    config.write_text(CONFIG)
    log = data_dir / "orkestrd.log"
    out = data_dir / "orkestrd.out"
    port = _free_port()
    args = [
        str(BIN / "orkestrd"), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir),
        "--state-dir", str(state_dir), "--runsc", str(RUNSC), "--agent", str(BIN / "orkestr-agent"),
        "--template-dir", str(TEMPLATE_DIR), "--pool-size", "1", "--config", str(config), "--log-level", "debug",
    ]
    with open(out, "wb") as fout, open(log, "wb") as flog:
        proc = subprocess.Popen(args, stdout=fout, stderr=flog)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            httpx.get(url + "/healthz", timeout=2)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    m = KEY_RE.search(out.read_text())
    srv = Server(url=url, key=m.group(0) if m else "", data_dir=data_dir, state_dir=state_dir,
                 config=config, log=log, proc=proc)
    try:
        if proc.poll() is not None or not srv.key:
            pytest.fail(f"orkestrd did not start (exit {proc.poll()}):\n{srv.log_text()[-4000:]}")
        yield srv
    finally:
        _stop(srv)


def _stop(srv: Server) -> None:
    if srv.proc.poll() is None:
        srv.proc.send_signal(signal.SIGTERM)
        try:
            srv.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            srv.proc.kill()
            srv.proc.wait()
    leftovers = _processes_under(srv.state_dir)
    # Whatever a graceful stop left is removed here, so that nothing leaks
    # even when the test fails; then the leak is reported.
    sandboxes = srv.state_dir / "sandboxes"
    if sandboxes.is_dir():
        for sb in sandboxes.iterdir():
            subprocess.run([str(RUNSC), "--root", str(srv.state_dir / "runsc"), "delete", "--force", sb.name],
                           capture_output=True, timeout=60)
    for pid in _processes_under(srv.state_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    mounts = _mounts_under(srv.state_dir)
    for mp in mounts:
        subprocess.run(["umount", "-l", mp], capture_output=True)
    shutil.rmtree(srv.state_dir, ignore_errors=True)
    shutil.rmtree(srv.data_dir, ignore_errors=True)
    if leftovers or mounts:
        raise AssertionError(f"orkestrd left processes {leftovers} and mounts {mounts} after SIGTERM")


@pytest.fixture
def env(server: Server, monkeypatch: pytest.MonkeyPatch) -> Server:
    """ORKESTR_API_KEY/ORKESTR_BASE_URL point at the test server (bootstrap
    key, plan team), as the README examples expect."""
    monkeypatch.setenv("ORKESTR_API_KEY", server.key)
    monkeypatch.setenv("ORKESTR_BASE_URL", server.url)
    return server


ClientFactory = Callable[..., orkestr.Client]


@pytest.fixture
def clients() -> Iterator[ClientFactory]:
    """Makes orkestr.Client objects (same arguments) closed after the test."""
    made: List[orkestr.Client] = []

    def make(*args: Any, **kw: Any) -> orkestr.Client:
        c = orkestr.Client(*args, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture(autouse=True)
def _close_default_clients() -> Iterator[None]:
    yield
    orkestr.close_default_clients()
