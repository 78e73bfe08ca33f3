"""What ``pip install ./client_sdk`` installs: the device runtime and the protocol core, no server role.

The client wheel is built from a copy of ``client_sdk/`` (so no stale ``build/`` tree of an
earlier layout can leak into it) and read back: no server or simulation module is in it, no file in
it defines the coordinator's side of a protocol or a data/model generator, no file imports
``lada_coordinator`` (at any level, function bodies included), and its metadata names no server
dependency.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

CLIENT_SDK = Path(__file__).resolve().parents[2] / "client_sdk"

#: modules that moved to the coordinator distribution (lada_coordinator.aggregation, .simulation)
SERVER_MODULES = (
    "lada_client/data/domains.py",
    "lada_client/data/gym.py",
    "lada_client/models/factory.py",
    "lada_client/training/pretrain.py",
)
#: names of the server role and the simulation; no module of the client wheel may define one
SERVER_NAMES = {
    "SecAggServer",
    "Aggregate",
    "check_share_bundle",
    "check_unmask_response",
    "check_masked_peers",
    "make_federation",
    "make_gym_federation",
    "generate",
    "create_model",
    "build_tokenizer",
    "save_tokenizer",
    "pretrain",
}
#: distributions a device never needs
SERVER_REQUIREMENTS = ("lada-coordinator", "fastapi", "uvicorn", "rich", "reasoning-gym")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    root = tmp_path_factory.mktemp("wheel")
    source = root / "client_sdk"
    # symlinks=False: the LICENSE link (to ../LICENSE) is copied as a file
    shutil.copytree(CLIENT_SDK, source, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"))
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    done = subprocess.run(
        [*pip, "-w", str(root / "out"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (built,) = (root / "out").glob("lada_client-*.whl")
    return zipfile.ZipFile(built)


def _sources(wheel: zipfile.ZipFile) -> dict[str, str]:
    return {n: wheel.read(n).decode("utf-8") for n in wheel.namelist() if n.endswith(".py")}


def _imported_modules(tree: ast.AST) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(tree):  # every level: module, function bodies, TYPE_CHECKING blocks
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_wheel_holds_the_runtime_and_the_protocol_core_only(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    packages = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert packages == {"lada_client"}
    for core in ("wire", "crypto", "secagg", "reasoning", "config_io", "enrollment"):
        assert f"lada_client/common/{core}.py" in names
    for runtime in ("client.py", "transport.py", "scoring/onnx_slm.py", "data/samples.py", "data/user_files.py"):
        assert f"lada_client/{runtime}" in names
    assert not names & set(SERVER_MODULES)


def test_no_server_or_simulation_code_is_defined_in_the_wheel(wheel: zipfile.ZipFile) -> None:
    found = []
    for name, text in _sources(wheel).items():
        for node in ast.parse(text, name).body:  # module level (``OnnxSLM.generate`` is a method)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name in SERVER_NAMES:
                found.append(f"{name}: {node.name}")
    assert found == []


def test_the_client_never_imports_the_coordinator(wheel: zipfile.ZipFile) -> None:
    sources = _sources(wheel)
    # the installed package and the source tree (tests run against the source tree) alike
    sources.update({str(p): p.read_text("utf-8") for p in (CLIENT_SDK / "lada_client").rglob("*.py")})
    offenders = sorted(
        name
        for name, text in sources.items()
        if any(m.split(".")[0] == "lada_coordinator" for m in _imported_modules(ast.parse(text, name)))
    )
    assert offenders == []


def test_metadata_names_no_server_dependency(wheel: zipfile.ZipFile) -> None:
    (metadata,) = (n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    message = Parser().parsestr(wheel.read(metadata).decode("utf-8"))
    base = [r for r in message.get_all("Requires-Dist") or [] if "extra ==" not in r]
    assert base, "the base requirements are missing from the metadata"
    assert not [r for r in base if r.lower().startswith(SERVER_REQUIREMENTS)]
    assert not [r for r in message.get_all("Requires-Dist") or [] if r.lower().startswith("lada-coordinator")]
