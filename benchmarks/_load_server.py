"""A coordinator HTTP server for :mod:`bench_load`: ``build()`` + uvicorn, round engine not started.

The benchmark opens rounds itself (through the same SQLite file), so the server does only what it
does for clients: authenticate, decrypt, validate, record, reply sealed.

    python benchmarks/_load_server.py --config coordinator.json
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import uvicorn

from lada_coordinator.config import CoordinatorConfig
from lada_coordinator.server.run import build, uvicorn_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, required=True, help="coordinator JSON config")
    p.add_argument("--backlog", type=int, default=2048)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = CoordinatorConfig.load(args.config)
    app, _engine, store = build(config)
    try:
        server_config = uvicorn_config(app, config)
        server_config.backlog = args.backlog
        uvicorn.Server(server_config).run()
    finally:
        store.close()


if __name__ == "__main__":
    main()
