"""Schema-driven fuzzing of the HTTP API (schemathesis): no 5xx, and rejected input changes nothing.

Bounded: a fixed number of generated requests against a real server on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from lada_client.common.wire import Candidate, RoundInfo  # noqa: E402

MAX_EXAMPLES = int(os.environ.get("LADA_FUZZ_EXAMPLES", "150"))


def test_fuzz_api_from_openapi_schema(server, enroll, db_dump):
    url, store, config = server
    enroll(server)  # a real enrolled client and an open round: fuzzed input meets real state
    info = RoundInfo(
        round=1,
        phase="features",
        total_rounds=2,
        candidates=[
            Candidate(sample_id="p1", question="q", path="1 + 1 = 2. The answer is 2.", llm_logprob=-2.0, llm_tokens=8)
        ],
        feature_names=["slm_path_nll"],
    )
    store.open_round(1, info)
    schema = schemathesis.openapi.from_dict(httpx.get(f"{url}/openapi.json").json())
    seen: dict[str, int] = {}
    state = {"db": db_dump(Path(config.db_path))}

    operations = [result.ok() for result in schema.get_all_operations()]
    per_operation = max(5, MAX_EXAMPLES // len(operations))  # every operation gets its share

    def run(strategy) -> None:
        @settings(max_examples=per_operation, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=strategy)
        def check(case) -> None:
            response = case.call(base_url=url, timeout=10)
            seen[f"{case.method} {case.path}"] = seen.get(f"{case.method} {case.path}", 0) + 1
            assert response.status_code < 500, (
                f"{case.method} {case.path} -> {response.status_code}: {response.text[:300]}"
            )
            if response.status_code >= 400:
                body = response.json()
                assert body.get("error") and body.get("detail"), body
            if case.method == "POST" and response.status_code >= 400:
                after = db_dump(Path(config.db_path))
                assert after == state["db"], f"rejected {case.method} {case.path} changed the database"
            state["db"] = db_dump(Path(config.db_path))

        check()

    for operation in operations:
        run(operation.as_strategy())
    total = sum(seen.values())
    assert total >= min(MAX_EXAMPLES, 50), seen
    assert {f"{op.method.upper()} {op.path}" for op in operations} == set(seen), seen  # each operation was fuzzed
    report = Path(os.environ.get("LADA_FUZZ_REPORT", config.db_path.parent / "fuzz.json"))
    report.write_text(json.dumps({"requests": total, "by_operation": seen}, indent=2))
