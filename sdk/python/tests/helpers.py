"""Shared bits of the SDK tests."""

from __future__ import annotations

from orkestr import OrkestrError


def network_unsupported(e: OrkestrError) -> bool:
    """Whether the server answered that a network mode is not available."""
    return e.status == 400 and e.code == "invalid_request" and e.details.get("field") == "network"
