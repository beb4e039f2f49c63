"""Exceptions of the orkestr SDK: one class per error family of the API."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional

from ._time import parse_time

if TYPE_CHECKING:
    from ._models import BlockedConnection, ExecResult

__all__ = [
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
]


class OrkestrError(Exception):
    """Base of every error the SDK raises.

    ``code`` is the API's error code (branch on it, never on the message),
    ``status`` the HTTP status (``None`` when no HTTP answer carried the
    error), ``request_id`` the ``X-Request-Id`` to quote in bug reports and
    ``details`` the code-specific details, as decoded from JSON.
    """

    code: str
    message: str
    status: Optional[int]
    request_id: Optional[str]
    details: Dict[str, Any]

    def __init__(
        self,
        message: str,
        *,
        code: str = "",
        status: Optional[int] = None,
        request_id: Optional[str] = None,
        details: Optional[Mapping[str, Any]] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.request_id = request_id
        self.details = dict(details or {})

    def __str__(self) -> str:
        head = self.code or (f"HTTP {self.status}" if self.status else "error")
        out = f"{head}: {self.message}" if self.message else head
        if self.request_id:
            out += f" (request {self.request_id})"
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, status={self.status!r}, "
            f"request_id={self.request_id!r}, message={self.message!r})"
        )


class APIConnectionError(OrkestrError):
    """No answer came from the API: DNS, refused or reset connection, TLS."""


class APITimeoutError(APIConnectionError):
    """The API did not answer within the client's timeout."""


class AuthError(OrkestrError):
    """Missing, malformed, unknown, revoked or expired API key (401), or a
    key without the scope the call needs (403 ``insufficient_scope``)."""

    @property
    def required_scope(self) -> Optional[str]:
        v = self.details.get("required_scope")
        return v if isinstance(v, str) else None


class RateLimitError(OrkestrError):
    """The plan's request rate was exceeded (429 ``rate_limited``)."""

    retry_after: float
    """Seconds to wait before the next request."""

    def __init__(self, message: str, *, retry_after: float = 0.0, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class PlanLimitError(OrkestrError):
    """The plan does not allow this (402): ``code`` is ``size_not_allowed``,
    ``concurrency_limit``, ``usage_exhausted``, ``snapshot_cap_reached`` or ``fork_limit``."""

    @property
    def resets_at(self) -> Optional[datetime]:
        """For ``usage_exhausted``: when the usage counters reset."""
        v = self.details.get("resets_at")
        if isinstance(v, str):
            try:
                return parse_time(v)
            except ValueError:
                return None
        return None


class SnapshotCapReached(PlanLimitError):
    """Pausing would keep more paused sandboxes than the plan allows
    (402 ``snapshot_cap_reached``)."""

    @property
    def cap(self) -> Optional[int]:
        v = self.details.get("cap")
        return v if isinstance(v, int) else None


class SandboxNotFound(OrkestrError):
    """No sandbox with this id exists in the account (404)."""


class SandboxNotReady(OrkestrError):
    """The operation needs a running sandbox and this one is not (409)."""

    @property
    def sandbox_status(self) -> Optional[str]:
        v = self.details.get("status")
        return v if isinstance(v, str) else None


class ExecTimeout(OrkestrError):
    """The command outlived its ``timeout_seconds`` and was killed with its
    children (408 ``exec_timeout``). ``stdout``/``stderr`` hold the output
    up to the kill (empty from a stream: the output came as chunks)."""

    @property
    def stdout(self) -> str:
        v = self.details.get("stdout")
        return v if isinstance(v, str) else ""

    @property
    def stderr(self) -> str:
        v = self.details.get("stderr")
        return v if isinstance(v, str) else ""

    @property
    def duration_ms(self) -> int:
        v = self.details.get("duration_ms")
        return int(v) if isinstance(v, (int, float)) else 0


class NetworkPolicyError(OrkestrError):
    """The command exited non-zero after the sandbox's network policy
    blocked at least one of its connections. ``result`` is the command's
    result; ``blocked_connections`` lists what was blocked."""

    result: ExecResult

    def __init__(self, result: ExecResult, *, request_id: Optional[str] = None) -> None:
        hosts = ", ".join(str(b) for b in result.blocked_connections)
        super().__init__(
            f"the command exited with code {result.exit_code} after the network "
            f"policy blocked connections to {hosts}",
            code="network_policy",
            request_id=request_id,
            details={
                "exit_code": result.exit_code,
                "blocked_connections": [
                    {"host": b.host, "port": b.port} for b in result.blocked_connections
                ],
            },
        )
        self.result = result

    @property
    def blocked_connections(self) -> List[BlockedConnection]:
        return self.result.blocked_connections


# HTTP status of each code, for errors that arrive inside an exec stream
# (whose HTTP status is 200).
STATUS_OF_CODE: Dict[str, int] = {
    "unauthenticated": 401,
    "process_not_found": 404,
    "process_stdin_closed": 409,
    "file_exists": 409,
    "permission_denied": 403,
    "insufficient_scope": 403,
    "rate_limited": 429,
    "size_not_allowed": 402,
    "concurrency_limit": 402,
    "usage_exhausted": 402,
    "snapshot_cap_reached": 402,
    "fork_limit": 402,
    "snapshot_corrupt": 422,
    "snapshot_store_unavailable": 503,
    "sandbox_not_found": 404,
    "sandbox_not_ready": 409,
    "exec_timeout": 408,
    "invalid_request": 400,
    "unknown_template": 400,
    "unknown_region": 400,
    "file_not_found": 404,
    "invalid_path": 400,
    "payload_too_large": 413,
    "no_capacity": 503,
    "invalid_archive": 400,
    "unavailable": 503,
    "internal": 500,
    "not_a_directory": 400,
    "read_only": 409,
    "busy": 409,
    "io_error": 422,
    "limit_exceeded": 422,
}


def classify(
    status: int,
    code: str,
    message: str,
    details: Mapping[str, Any],
    request_id: Optional[str],
    retry_after: float = 0.0,
) -> OrkestrError:
    """Map an API error to its class by HTTP status and code, per the API's
    error table. 401 and 429 map by status alone; a 402 with a code this SDK
    does not know is still a PlanLimitError."""
    kw: Dict[str, Any] = dict(code=code, status=status, request_id=request_id, details=details)
    if status == 401 or (status == 403 and code == "insufficient_scope"):
        return AuthError(message, **kw)
    if status == 429:
        ms = details.get("retry_after_ms")
        if isinstance(ms, (int, float)) and ms > 0:
            retry_after = ms / 1000.0
        return RateLimitError(message, retry_after=retry_after, **kw)
    if status == 402:
        if code == "snapshot_cap_reached":
            return SnapshotCapReached(message, **kw)
        return PlanLimitError(message, **kw)
    if status == 404 and code == "sandbox_not_found":
        return SandboxNotFound(message, **kw)
    if status == 409 and code == "sandbox_not_ready":
        return SandboxNotReady(message, **kw)
    if status == 408 and code == "exec_timeout":
        return ExecTimeout(message, **kw)
    return OrkestrError(message, **kw)
