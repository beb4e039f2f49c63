"""RFC 3339 times of the API as timezone-aware datetimes (Python 3.9's
fromisoformat takes neither "Z" nor nanoseconds)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Optional

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)


def parse_time(s: str) -> datetime:
    """Parse an RFC 3339 time into an aware datetime (UTC offsets kept)."""
    m = _RFC3339.match(s)
    if m is None:
        raise ValueError(f"not an RFC 3339 time: {s[:64]!r}")
    year, month, day, hour, minute, sec = (int(m.group(i)) for i in range(1, 7))
    frac = m.group(7) or ""
    micro = int((frac + "000000")[:6])
    if m.group(8):
        tz = timezone.utc
    else:
        off = timedelta(hours=int(m.group(10)), minutes=int(m.group(11)))
        tz = timezone(-off if m.group(9) == "-" else off)
    return datetime(year, month, day, hour, minute, sec, micro, tzinfo=tz)


def parse_opt_time(s: object) -> Optional[datetime]:
    return parse_time(s) if isinstance(s, str) and s else None


def format_time(t: datetime) -> str:
    """Format an aware datetime as RFC 3339 UTC with microseconds."""
    if t.tzinfo is None or t.tzinfo.utcoffset(t) is None:
        raise ValueError(
            "orkestr: a naive datetime is ambiguous; pass a timezone-aware one, "
            "e.g. datetime.now(timezone.utc)"
        )
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
