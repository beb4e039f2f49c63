"""orkestr: the Python SDK of the orkestr sandbox API, sync (Sandbox) and
asyncio (AsyncSandbox), snake_case end to end.

    from orkestr import Sandbox

    with Sandbox.with_temp(template="python-3.12") as sbx:
        sbx.files.write("/workspace/main.py", "print(sum(range(1_000_000)))")
        print(sbx.exec("python /workspace/main.py").stdout)
"""

from ._async_sandbox import AsyncExecStream, AsyncFiles, AsyncSandbox
from ._client import (
    DEFAULT_BASE_URL,
    AsyncClient,
    Client,
    aclose_default_clients,
    close_default_clients,
)
from ._errors import (
    APIConnectionError,
    APITimeoutError,
    AuthError,
    ExecTimeout,
    NetworkPolicyError,
    OrkestrError,
    PlanLimitError,
    RateLimitError,
    SandboxNotFound,
    SandboxNotReady,
    SnapshotCapReached,
)
from ._models import (
    BlockedConnection,
    CpuUsage,
    ExecChunk,
    ExecResult,
    FileEntry,
    Lifetime,
    Limits,
    MemoryUsage,
    MetricSample,
    Metrics,
    SizeInfo,
    Template,
)
from ._processes import (
    AsyncProcess,
    AsyncProcesses,
    AsyncWatch,
    Detached,
    FileStat,
    Process,
    Processes,
    ProcessInfo,
    Watch,
    WatchEvent,
)
from ._sandbox import ExecStream, Files, Sandbox
from ._terminal import AsyncTerminal, Terminal, TerminalExit
from ._version import __version__

__all__ = [
    "__version__",
    "DEFAULT_BASE_URL",
    "Client",
    "AsyncClient",
    "close_default_clients",
    "aclose_default_clients",
    "Sandbox",
    "AsyncSandbox",
    "Files",
    "AsyncFiles",
    "ExecStream",
    "AsyncExecStream",
    "Terminal",
    "AsyncTerminal",
    "TerminalExit",
    "ExecResult",
    "ExecChunk",
    "BlockedConnection",
    "FileEntry",
    "Limits",
    "SizeInfo",
    "Metrics",
    "CpuUsage",
    "MemoryUsage",
    "Lifetime",
    "MetricSample",
    "Template",
    "OrkestrError",
    "APIConnectionError",
    "APITimeoutError",
    "AuthError",
    "RateLimitError",
    "PlanLimitError",
    "SnapshotCapReached",
    "SandboxNotFound",
    "SandboxNotReady",
    "ExecTimeout",
    "NetworkPolicyError",
    "Detached",
    "Process",
    "AsyncProcess",
    "Processes",
    "AsyncProcesses",
    "ProcessInfo",
    "FileStat",
    "WatchEvent",
    "Watch",
    "AsyncWatch",
]
