"""Off-device tools: what a device owner runs once, on a desktop or a build machine, before a
device scores anything (the ``export`` extra: torch, transformers, optimum, gguf)::

    from lada_client.tools import export_scoring_model, import_slm

    imported = import_slm(Path("SmolLM2-135M-Instruct.Q4_1.gguf"), Path("slm"))  # checkpoint + ONNX
    export_scoring_model(Path("my-checkpoint"), Path("model/model.onnx"))       # ONNX only

They are kept out of ``lada_client`` itself because a device installs no such packages: nothing
there may import them. Names are imported on first use, as in ``lada_client``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lada_client.common.lazy import lazy_exports

__all__ = ["ImportedSLM", "export_scoring_model", "import_slm"]

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "ImportedSLM": "lada_client.models.importer",
    "export_scoring_model": "lada_client.models.export",
    "import_slm": "lada_client.models.importer",
}

if TYPE_CHECKING:
    from lada_client.models.export import export_scoring_model
    from lada_client.models.importer import ImportedSLM, import_slm

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS, __all__)
