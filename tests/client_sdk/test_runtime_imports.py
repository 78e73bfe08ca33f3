"""The device runtime imports without the extras, the coordinator or the off-device model tools.

A scoring device installs ``lada-client`` alone: no torch, transformers, peft, onnx, gguf or
optimum, and no ``lada_coordinator``. A fresh interpreter with those blocked (a meta-path finder
refuses them, as if they were not installed) imports every runtime module and resolves every
public name; the off-device tools (GGUF/HF import, ONNX export, ORT training artifacts, behind the
``export`` extra) must not be pulled in on the way.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import lada_client

#: what a device without extras lacks (import names; ``onnx`` is not ``onnxruntime``)
BLOCKED = ("torch", "transformers", "peft", "onnx", "gguf", "optimum", "reasoning_gym", "lada_coordinator")
#: the LoRA step on torch: the ``train`` extra, imported only when a torch trainer is built
TRAIN_MODULES = ("lada_client.training.lora", "lada_client.training.losses")
#: off-device model tools a device owner runs once (the ``export`` extra)
TOOL_MODULES = (
    "lada_client.models.export",
    "lada_client.models.importer",
    "lada_client.models.smollm2",
    "lada_client.training.ort_artifacts",
)

_PROBE = """
import importlib, json, sys

blocked, modules, tools = json.loads(sys.argv[1])


class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None


sys.meta_path.insert(0, Refuse())
failed = {}
for module in modules:
    try:
        importlib.import_module(module)
    except ImportError as exc:
        failed[module] = str(exc)
import lada_client

for name in lada_client.__all__:
    try:
        getattr(lada_client, name)
    except ImportError as exc:
        failed[f"lada_client.{name}"] = str(exc)
loaded = sorted(m for m in sys.modules if m in tools or m.split(".")[0] in blocked)
print(json.dumps({"failed": failed, "loaded": loaded}))
"""


def runtime_modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(lada_client.__path__, "lada_client.")]
    return sorted(n for n in names if n not in TRAIN_MODULES and n not in TOOL_MODULES)


def test_runtime_imports_without_extras_coordinator_or_tools() -> None:
    modules = runtime_modules()
    assert "lada_client.client" in modules and "lada_client.common.secagg" in modules
    args = json.dumps([list(BLOCKED), modules, list(TOOL_MODULES)])
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, args], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["failed"] == {}, "runtime modules need a blocked package"
    assert result["loaded"] == [], "the runtime imported an off-device tool or a blocked package"


def test_tool_and_train_modules_exist() -> None:
    """The lists above name real modules (a renamed module must not silently leave the check)."""
    names = {m.name for m in pkgutil.walk_packages(lada_client.__path__, "lada_client.")}
    assert set(TRAIN_MODULES) | set(TOOL_MODULES) <= names
