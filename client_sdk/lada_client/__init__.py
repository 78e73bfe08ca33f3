"""LaDa device SDK: score learnability on an ONNX SLM, take part in sealed rounds, train LoRA.

The public API for embedding the client in an application::

    from lada_client import ClientConfig, LadaClient

    config = ClientConfig.load("client.json")      # validated: a ConfigError names each bad field
    with LadaClient(config) as client:
        results = client.run()

Names are imported on first use, so ``import lada_client`` stays cheap and none of the public
names imports torch: a device that only scores has none installed. Everything else (``scoring``,
``training``, ``models``, ``common``) is importable by its module path but not a stable API; the
off-device tools (model import, ONNX export) are :mod:`lada_client.tools`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from lada_client.common.lazy import lazy_exports

__all__ = [
    "BackendUnavailable",
    "Bridge",
    "BridgeError",
    "ClientConfig",
    "ConfigError",
    "CoordinatorError",
    "DPSettings",
    "DistillSettings",
    "LadaClient",
    "LogProgress",
    "LoraSettings",
    "ModelLoadError",
    "OnnxSLM",
    "RewardSettings",
    "RoundResult",
    "RoundStep",
    "TerminalProgress",
    "TrainingSupport",
    "__version__",
    "format_prompt",
    "format_target",
    "select_providers",
    "training_support",
]

try:
    __version__: str = version("lada-client")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "BackendUnavailable": "lada_client.training.backend",
    "Bridge": "lada_client.bridge",
    "BridgeError": "lada_client.bridge",
    "ClientConfig": "lada_client.config",
    "ConfigError": "lada_client.common.config_io",
    "CoordinatorError": "lada_client.transport",
    "DPSettings": "lada_client.privacy.dp",
    "DistillSettings": "lada_client.config",
    "LadaClient": "lada_client.client",
    "LogProgress": "lada_client.progress",
    "TerminalProgress": "lada_client.progress",
    "LoraSettings": "lada_client.config",
    "ModelLoadError": "lada_client.scoring.onnx_slm",
    "OnnxSLM": "lada_client.scoring.onnx_slm",
    "RewardSettings": "lada_client.config",
    "RoundResult": "lada_client.client",
    "RoundStep": "lada_client.client",
    "TrainingSupport": "lada_client.capabilities",
    "format_prompt": "lada_client.common.reasoning",
    "format_target": "lada_client.common.reasoning",
    "select_providers": "lada_client.scoring.onnx_slm",
    "training_support": "lada_client.capabilities",
}

if TYPE_CHECKING:
    from lada_client.bridge import Bridge, BridgeError
    from lada_client.capabilities import TrainingSupport, training_support
    from lada_client.client import LadaClient, RoundResult, RoundStep
    from lada_client.common.config_io import ConfigError
    from lada_client.common.reasoning import format_prompt, format_target
    from lada_client.config import ClientConfig, DistillSettings, LoraSettings, RewardSettings
    from lada_client.privacy.dp import DPSettings
    from lada_client.progress import LogProgress, TerminalProgress
    from lada_client.scoring.onnx_slm import ModelLoadError, OnnxSLM, select_providers
    from lada_client.training.backend import BackendUnavailable
    from lada_client.transport import CoordinatorError


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS, __all__)
