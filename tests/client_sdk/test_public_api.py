"""The public API: ``from lada_client import ...``, a version, type hints shipped, and no torch on import."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import lada_client
import lada_coordinator

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "peft", "optimum", "onnx")


def _modules_after(code: str) -> set[str]:
    """The top-level modules loaded by ``code`` in a fresh interpreter (this one has torch loaded)."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_public_names_resolve_and_match_all() -> None:
    assert "__version__" in lada_client.__all__ and isinstance(lada_client.__version__, str) and lada_client.__version__
    for name in lada_client.__all__:
        assert getattr(lada_client, name) is not None, name
    from lada_client import ClientConfig, ConfigError, LadaClient
    from lada_client.client import LadaClient as Defined
    from lada_client.config import ClientConfig as DefinedConfig

    assert LadaClient is Defined and ClientConfig is DefinedConfig and issubclass(ConfigError, ValueError)
    assert set(lada_client.__all__) <= set(dir(lada_client))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        lada_client.Nope  # noqa: B018


def test_the_examples_use_the_public_names_only() -> None:
    """The examples are what integrators copy: every SDK name they use comes from ``lada_client``
    or, for the off-device tools, ``lada_client.tools``."""
    import lada_client.tools
    from lada_client.common.reasoning import format_prompt, format_target
    from lada_client.models.export import export_scoring_model

    assert (lada_client.format_prompt, lada_client.format_target) == (format_prompt, format_target)
    assert lada_client.tools.export_scoring_model is export_scoring_model
    public = {"lada_client": set(lada_client.__all__), "lada_client.tools": set(lada_client.tools.__all__)}
    for script in sorted((REPO / "examples").rglob("*.py")):
        for node in ast.walk(ast.parse(script.read_text("utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lada_client"):
                assert node.module in public, (script.name, node.module)
                assert {a.name for a in node.names} <= public[node.module], script.name
            elif isinstance(node, ast.Import):
                assert not [a.name for a in node.names if a.name.startswith("lada_client.")], script.name


def test_import_and_public_names_do_not_import_torch() -> None:
    assert not set(HEAVY) & _modules_after("import lada_client")
    # a scoring-only device uses all of these; none may need the train extra
    assert not set(HEAVY) & _modules_after("from lada_client import *\nfrom lada_client import Bridge, LadaClient")


def test_versions_and_type_markers() -> None:
    assert isinstance(lada_coordinator.__version__, str) and lada_coordinator.__version__
    assert lada_coordinator.__all__ == ["CoordinatorConfig", "__version__"]
    from lada_coordinator import CoordinatorConfig
    from lada_coordinator.config import CoordinatorConfig as Defined

    assert CoordinatorConfig is Defined
    for package in ("client_sdk/lada_client", "coordinator/lada_coordinator"):
        assert (REPO / package / "py.typed").is_file()
    for project in ("client_sdk", "coordinator"):
        text = (REPO / project / "pyproject.toml").read_text()
        assert 'license-files = ["LICENSE"]' in text and '"py.typed"' in text
        assert (REPO / project / "LICENSE").read_text() == (REPO / "LICENSE").read_text()
    assert "Apache License" in (REPO / "LICENSE").read_text() and "Version 2.0" in (REPO / "LICENSE").read_text()
