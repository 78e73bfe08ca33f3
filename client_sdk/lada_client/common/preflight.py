"""Preflight results shared by ``lada-client check`` and ``lada-coordinator check``.

A check never raises: every probe turns what went wrong into one :class:`Check` with a status and a
sentence a person can act on, so one broken thing (a missing package, an unreachable coordinator)
does not hide the others. The result is the same list for the terminal and for ``--json``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Literal

__all__ = ["Check", "Status", "as_json", "failed", "package_versions", "probe", "render", "writable_or_creatable"]

Status = Literal["ok", "warn", "fail", "skip"]


@dataclass(frozen=True)
class Check:
    """One preflight item: ``fail`` blocks taking part; ``warn`` works but deserves a look;
    ``skip`` could not be checked because something it needs failed first."""

    name: str
    status: Status
    detail: str


def probe(name: str, fn: Callable[[], tuple[Status, str]]) -> Check:
    """Run one probe; an unexpected exception is a ``fail`` naming it, never a traceback."""
    try:
        status, detail = fn()
    except Exception as exc:  # noqa: BLE001 - a probe's job is to report failures, whatever their type
        return Check(name, "fail", f"{type(exc).__name__}: {exc}")
    return Check(name, status, detail)


def failed(checks: Iterable[Check]) -> bool:
    return any(c.status == "fail" for c in checks)


def as_json(checks: list[Check]) -> str:
    return json.dumps({"ok": not failed(checks), "checks": [asdict(c) for c in checks]}, indent=2)


def render(checks: list[Check]) -> str:
    """Plain aligned text (the client has no terminal library; the coordinator may colour it)."""
    width = max((len(c.name) for c in checks), default=0)
    lines = [f"{c.status:<4}  {c.name:<{width}}  {c.detail}" for c in checks]
    counts = {s: sum(c.status == s for c in checks) for s in ("ok", "warn", "fail", "skip")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    verdict = "not ready" if counts["fail"] else "ready"
    return "\n".join([*lines, f"{verdict}: {summary}"])


def package_versions(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """(``"name version"`` of each installed distribution, names of the missing ones)."""
    found, missing = [], []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            missing.append(name)
    return found, missing


def writable_or_creatable(path: Path) -> tuple[bool, str]:
    """Whether a directory can be written (a temporary file is made and removed) or, if it does not
    exist yet, created; nothing is left behind either way."""
    if path.is_dir():
        with tempfile.NamedTemporaryFile(dir=path, prefix=".check-"):
            pass
        return True, f"{path} is writable"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
        return True, f"{path} will be created on the first start"
    return False, f"{path} does not exist and cannot be created ({parent} is not writable)"
