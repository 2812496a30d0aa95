"""Optional dependencies: imported late, with an install hint when missing."""

from __future__ import annotations

import importlib
from types import ModuleType

_EXTRAS = {"matplotlib": "plot", "transformers": "hf", "lightning": "lightning"}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise ``ImportError`` saying how to install it.

    Args:
        module: importable name, e.g. ``"matplotlib.pyplot"``.
        purpose: what the caller needs it for, used in the message.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = _EXTRAS.get(top)
        hint = f"pip install 'autowarm[{extra}]'" if extra else f"pip install {top}"
        raise ImportError(f"{purpose} needs {top}, which is not installed: {hint}") from exc
