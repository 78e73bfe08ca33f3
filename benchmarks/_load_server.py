"""A coordinator HTTP server for :mod:`bench_load`: ``build()`` + uvicorn, round engine not started.

The benchmark opens rounds itself (through the same SQLite file), so the server does only what it
does for clients: authenticate, decrypt, validate, record, reply sealed.

    python benchmarks/_load_server.py --config coordinator.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn

from lada_coordinator.config import CoordinatorConfig
from lada_coordinator.server.run import build, uvicorn_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, required=True, help="coordinator JSON config")
    p.add_argument("--backlog", type=int, default=2048)
    p.add_argument("--stats-out", type=Path, default=None, help="write the store's commit counters here on exit")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = CoordinatorConfig.load(args.config)
    app, _engine, store = build(config)
    if args.stats_out is not None:
        # uvicorn re-raises SIGTERM once it has shut down, so code after run() never runs: the
        # counters are written at the end of the app's lifespan instead
        inner = app.router.lifespan_context

        @contextlib.asynccontextmanager
        async def lifespan(a: Any) -> AsyncIterator[Any]:
            async with inner(a) as state:
                yield state
            args.stats_out.write_text(json.dumps(store.stats))

        app.router.lifespan_context = lifespan
    try:
        server_config = uvicorn_config(app, config)
        server_config.backlog = args.backlog
        uvicorn.Server(server_config).run()
    finally:
        store.close()


if __name__ == "__main__":
    main()
