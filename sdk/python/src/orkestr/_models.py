"""Typed values of the API, snake_case as on the wire, with aware datetimes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Dict, List, Mapping, Optional

from ._time import parse_opt_time, parse_time

__all__ = [
    "BlockedConnection",
    "ExecResult",
    "ExecChunk",
    "FileEntry",
    "SizeInfo",
    "Limits",
    "CpuUsage",
    "MemoryUsage",
    "Lifetime",
    "MetricSample",
    "Metrics",
    "Template",
]


def _str(d: Mapping[str, Any], k: str) -> str:
    v = d.get(k)
    return v if isinstance(v, str) else ""


def _int(d: Mapping[str, Any], k: str) -> int:
    v = d.get(k)
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0


def _float(d: Mapping[str, Any], k: str) -> float:
    v = d.get(k)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0.0


def _obj(d: Mapping[str, Any], k: str) -> Mapping[str, Any]:
    v = d.get(k)
    return v if isinstance(v, dict) else {}


def _list(d: Mapping[str, Any], k: str) -> List[Any]:
    v = d.get(k)
    return v if isinstance(v, list) else []


@dataclass(frozen=True)
class BlockedConnection:
    """A connection the sandbox's network policy dropped."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def _from(cls, d: Mapping[str, Any]) -> BlockedConnection:
        return cls(host=_str(d, "host"), port=_int(d, "port"))


@dataclass(frozen=True)
class ExecResult:
    """How a command ended. A non-zero ``exit_code`` is not an error (unless
    connections were blocked: see NetworkPolicyError). From ``exec_stream``,
    ``stdout`` and ``stderr`` are empty: the output came as chunks."""

    stdout: str
    stderr: str
    exit_code: int
    duration_ms: int
    blocked_connections: List[BlockedConnection] = field(default_factory=list)
    #: A process of the command was killed at the sandbox's memory limit
    #: (the sandbox keeps running).
    oom_killed: bool = False

    @classmethod
    def _from(cls, d: Mapping[str, Any]) -> ExecResult:
        return cls(
            stdout=_str(d, "stdout"),
            stderr=_str(d, "stderr"),
            exit_code=_int(d, "exit_code"),
            duration_ms=_int(d, "duration_ms"),
            blocked_connections=[
                BlockedConnection._from(b) for b in _list(d, "blocked_connections") if isinstance(b, dict)
            ],
            oom_killed=d.get("oom_killed") is True,
        )


class ExecChunk:
    """A piece of a running command's output; ``stream`` is "stdout" or
    "stderr". ``raw`` holds its bytes exactly as the command wrote them;
    ``data`` the same as text (UTF-8, a character split between chunks is
    joined into the later one, invalid bytes become U+FFFD), decoded when
    first read, so a caller that wants only bytes pays for no decoding.
    Chunks compare equal by stream and text."""

    __slots__ = ("stream", "raw", "_data", "_head", "_cut")

    def __init__(self, stream: str, data: Optional[str] = None, raw: bytes = b"", _head: bytes = b"",
                 _cut: Optional[int] = None) -> None:
        self.stream = stream
        self.raw = raw
        self._data = data
        # Without data, the text is _head (the end of a character the chunk
        # before began) then raw up to _cut, joined only when data is first
        # read: a caller of raw alone copies nothing for it.
        self._head = _head
        self._cut = _cut

    @property
    def data(self) -> str:
        if self._data is None:
            cut = len(self.raw) if self._cut is None else self._cut
            text = self._head + self.raw[:cut] if self._head or cut < len(self.raw) else self.raw
            self._data = text.decode("utf-8", "replace")
        return self._data

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExecChunk):
            return NotImplemented
        return self.stream == other.stream and self.data == other.data

    def __hash__(self) -> int:
        return hash((self.stream, self.data))

    def __repr__(self) -> str:
        return f"ExecChunk(stream={self.stream!r}, data={self.data!r})"


@dataclass(frozen=True)
class FileEntry:
    """One entry of a directory listing; ``mode`` holds the permission bits."""

    name: str
    path: str
    is_dir: bool
    size: int
    mode: int
    modified_at: Optional[datetime]

    @classmethod
    def _from(cls, d: Mapping[str, Any]) -> FileEntry:
        return cls(
            name=_str(d, "name"),
            path=_str(d, "path"),
            is_dir=bool(d.get("is_dir")),
            size=_int(d, "size"),
            mode=_int(d, "mode"),
            modified_at=parse_opt_time(d.get("modified_at")),
        )


@dataclass(frozen=True)
class SizeInfo:
    """One size of the menu and whether the plan allows it."""

    size: str
    cpu: float
    memory_mb: int
    allowed: bool

    @classmethod
    def _from(cls, d: Mapping[str, Any]) -> SizeInfo:
        return cls(size=_str(d, "size"), cpu=_float(d, "cpu"), memory_mb=_int(d, "memory_mb"),
                   allowed=bool(d.get("allowed")))


@dataclass(frozen=True)
class Limits:
    """Sizes, caps and monthly usage of the API key's plan. ``max_concurrent``
    and ``snapshot_cap`` of 0 mean no limit."""

    plan: str
    allowed_sizes: List[str]
    max_concurrent: int
    snapshot_cap: int
    usage_gb_hours_used: float
    usage_gb_hours_included: float
    usage_cpu_hours_used: float
    usage_cpu_hours_included: float
    usage_resets_at: datetime
    sizes: List[SizeInfo]
    #: The most clones one ``fork`` makes.
    max_fork: int = 0

    @classmethod
    def _from(cls, d: Mapping[str, Any]) -> Limits:
        return cls(
            plan=_str(d, "plan"),
            allowed_sizes=[s for s in _list(d, "allowed_sizes") if isinstance(s, str)],
            max_concurrent=_int(d, "max_concurrent"),
            snapshot_cap=_int(d, "snapshot_cap"),
            usage_gb_hours_used=_float(d, "usage_gb_hours_used"),
            usage_gb_hours_included=_float(d, "usage_gb_hours_included"),
            usage_cpu_hours_used=_float(d, "usage_cpu_hours_used"),
            usage_cpu_hours_included=_float(d, "usage_cpu_hours_included"),
            usage_resets_at=parse_time(_str(d, "usage_resets_at")),
            sizes=[SizeInfo._from(s) for s in _list(d, "sizes") if isinstance(s, dict)],
            max_fork=_int(d, "max_fork"),
        )


@dataclass(frozen=True)
class CpuUsage:
    cores: float
    usage_cores: float
    usage_percent: float
    """Of the allocated cores: one pegged core of a 1-core sandbox = 100."""


@dataclass(frozen=True)
class MemoryUsage:
    limit_bytes: int
    usage_bytes: int
    """Working set, reclaimable cache excluded."""
    usage_percent: float


@dataclass(frozen=True)
class Lifetime:
    cpu_seconds: float
    mem_mb_seconds: int
    running_seconds: int


@dataclass(frozen=True)
class MetricSample:
    t: datetime
    cpu_percent: float
    mem_bytes: int


@dataclass(frozen=True)
class Metrics:
    """Live CPU and memory (``None`` unless running), the last ~60 s of
    samples (oldest first) and lifetime totals."""

    sandbox_id: str
    sandbox_status: str
    sample_interval_seconds: int
    cpu: Optional[CpuUsage]
    memory: Optional[MemoryUsage]
    lifetime: Lifetime
    samples: List[MetricSample]

    @classmethod
    def _from(cls, d: Mapping[str, Any]) -> Metrics:
        c = d.get("cpu")
        m = d.get("memory")
        lt = _obj(d, "lifetime")
        return cls(
            sandbox_id=_str(d, "sandbox_id"),
            sandbox_status=_str(d, "sandbox_status"),
            sample_interval_seconds=_int(d, "sample_interval_seconds"),
            cpu=CpuUsage(_float(c, "cores"), _float(c, "usage_cores"), _float(c, "usage_percent"))
            if isinstance(c, dict) else None,
            memory=MemoryUsage(_int(m, "limit_bytes"), _int(m, "usage_bytes"), _float(m, "usage_percent"))
            if isinstance(m, dict) else None,
            lifetime=Lifetime(_float(lt, "cpu_seconds"), _int(lt, "mem_mb_seconds"), _int(lt, "running_seconds")),
            samples=[
                MetricSample(parse_time(_str(s, "t")), _float(s, "cpu_percent"), _int(s, "mem_bytes"))
                for s in _list(d, "samples") if isinstance(s, dict)
            ],
        )


@dataclass(frozen=True)
class Template:
    """A template of the server's catalog; ``built`` says whether it can start here."""

    name: str
    description: str
    default: bool
    built: Optional[bool]

    @classmethod
    def _from(cls, d: Mapping[str, Any]) -> Template:
        b = d.get("built")
        return cls(name=_str(d, "name"), description=_str(d, "description"),
                   default=bool(d.get("default")), built=b if isinstance(b, bool) else None)


class SandboxFields:
    """The API's Sandbox object as last seen; shared by Sandbox and AsyncSandbox."""

    id: str
    status: str
    template: str
    size: str
    cpu: float
    memory_mb: int
    network: str
    region: str
    timeout_seconds: int
    expires_at: Optional[datetime]
    env_keys: List[str]
    metadata: Dict[str, str]
    created_at: Optional[datetime]
    paused_at: Optional[datetime]
    terminated_at: Optional[datetime]
    error_reason: Optional[str]

    def _set_fields(self, d: Mapping[str, Any]) -> None:
        self.id = _str(d, "id")
        self.status = _str(d, "status")
        self.template = _str(d, "template")
        self.size = _str(d, "size")
        self.cpu = _float(d, "cpu")
        self.memory_mb = _int(d, "memory_mb")
        self.network = _str(d, "network")
        self.region = _str(d, "region")
        self.timeout_seconds = _int(d, "timeout_seconds")
        self.expires_at = parse_opt_time(d.get("expires_at"))
        self.env_keys = [k for k in _list(d, "env_keys") if isinstance(k, str)]
        md = _obj(d, "metadata")
        self.metadata = {str(k): str(v) for k, v in md.items()}
        self.created_at = parse_opt_time(d.get("created_at"))
        self.paused_at = parse_opt_time(d.get("paused_at"))
        self.terminated_at = parse_opt_time(d.get("terminated_at"))
        reason = d.get("error_reason")
        self.error_reason = reason if isinstance(reason, str) else None

    def _blank(self, sandbox_id: str) -> None:
        self._set_fields({"id": sandbox_id})

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(id={self.id!r}, status={self.status!r}, template={self.template!r}, "
            f"size={self.size!r}, network={self.network!r}, region={self.region!r}, "
            f"created_at={self.created_at!r})"
        )
