"""LaDa coordinator: hosts the LLM, allocates public data by learnability, runs the rounds.

Operators use the ``lada-coordinator`` command; code that embeds the coordinator (tests,
benchmarks) starts from :class:`CoordinatorConfig` and :func:`lada_coordinator.server.run.build`.
Names are imported on first use, so ``import lada_coordinator`` (for ``__version__``, say) loads
none of torch, FastAPI or the LLM host.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from lada_client.common.lazy import lazy_exports

__all__ = ["CoordinatorConfig", "__version__"]

try:
    __version__: str = version("lada-coordinator")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

_EXPORTS: dict[str, str] = {"CoordinatorConfig": "lada_coordinator.config"}

if TYPE_CHECKING:
    from lada_coordinator.config import CoordinatorConfig


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS, __all__)
