"""Logging of the command-line tools (``lada-client``, ``lada-coordinator``): our loggers at INFO,
the libraries' at WARNING unless ``--verbose``.

A device polls its coordinator several times a second and httpx logs every request at INFO: left
alone, a client's log is almost nothing but ``HTTP Request: POST …`` lines, and the few that say
what the device did are lost among them. Standard library only, so the client SDK stays light.
"""

from __future__ import annotations

import logging

__all__ = ["LOG_FORMAT", "NOISY_LOGGERS", "quiet_libraries", "setup_logging"]

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"

#: Third-party loggers whose INFO records are per-request or per-step chatter, not events.
NOISY_LOGGERS = (
    "httpx",
    "httpcore",
    "urllib3",
    "uvicorn",
    "uvicorn.access",
    "uvicorn.error",
    "transformers",
    "optimum",
    "torch",
    "onnx",
    "onnxruntime",
    "filelock",
    "huggingface_hub",
    "asyncio",
)


def quiet_libraries(verbose: bool) -> None:
    """Library loggers at WARNING, or left to the root's level when ``verbose``."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)


def setup_logging(verbose: bool) -> None:
    """The daemons' logging: to stderr, DEBUG when ``verbose`` (libraries included), else INFO
    for this project and WARNING for the libraries."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)
    quiet_libraries(verbose)
