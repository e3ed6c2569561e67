"""Small wording helpers shared by the panels."""

from __future__ import annotations

from pathlib import Path


def reason_for(path: str, reason: str) -> str:
    """The engine's reason without the file name it starts with, for a line that names the
    file already ("broken1.jpg: broken1.jpg: not an image" read twice)."""
    name = Path(path).name if path else ""
    prefix = f"{name}: "
    return reason[len(prefix):] if name and reason.startswith(prefix) else reason


def plural(n: int, noun: str) -> str:
    """'1 image', '2 images'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def local_time(iso: str) -> str:
    """'2026-12-05 00:05' in this computer's time zone, from the library's UTC ISO stamp (a
    stamp without a zone is taken as UTC, as the library writes them)."""
    from datetime import datetime, timezone

    try:
        when = datetime.fromisoformat(str(iso).replace("Z", "+00:00"))
    except ValueError:
        return str(iso).replace("T", " ")[:16]
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone().strftime("%Y-%m-%d %H:%M")
