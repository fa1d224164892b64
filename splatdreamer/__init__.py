"""splatdreamer: text to 3D Gaussian splats with Variational Score Distillation (ProlificDreamer).

    from splatdreamer import GenerateConfig, generate, load_ply, save_ply, render
    from splatdreamer import batch                     # many prompts and seeds on Ray (the [ray] extra)

Names are imported on first use, so `import splatdreamer` stays light (no diffusers import).
`splatdreamer.generate`, `splatdreamer.batch` and `splatdreamer.render` are the functions, although submodules
of the same names exist; reach those with `from splatdreamer.generate import Generation` and the like.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

_EXPORTS = {
    "generate": "splatdreamer.generate",
    "Result": "splatdreamer.generate",
    "Progress": "splatdreamer.generate",
    "batch": "splatdreamer.batch",
    "BatchItem": "splatdreamer.batch",
    "RunEntry": "splatdreamer.batch",
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
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'splatdreamer' has no attribute {name!r}")


class _Package(types.ModuleType):
    """Importing a submodule sets the package's attribute of its name (`splatdreamer.generate` = the module,
    whichever code imported it first), which would hide the function `generate` of the same name."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == value.__name__:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
