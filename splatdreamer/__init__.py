"""splatdreamer: text to 3D Gaussian splats with Variational Score Distillation (ProlificDreamer).

    from splatdreamer import GenerateConfig, generate, load_ply, save_ply, render

Names are imported on first use, so `import splatdreamer` stays light (no diffusers import).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "generate": "splatdreamer.generate",
    "Result": "splatdreamer.generate",
    "Progress": "splatdreamer.generate",
    "GenerateConfig": "splatdreamer.config",
    "load_ply": "splatdreamer.io.ply",
    "save_ply": "splatdreamer.io.ply",
    "render": "splatdreamer.render",
    "RenderOutput": "splatdreamer.render",
    "DiffusionPrior": "splatdreamer.prior",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'splatdreamer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
