"""Export a particle for viewers: standard `.ply`, antimatter15 `.splat`, SuperSplat `.compressed.ply`.

"ply" is ours (`io.ply.save_ply`, with normals, readable back by `load_ply`). The two lossy
web formats come from `gsplat.export_splats` (pure Python, runs on the CPU; layouts in
notes/gsplat.md B4):

    splat           32 bytes per Gaussian, no header, no higher SH: float32 xyz, float32 exp(scale) x3,
                    uint8 RGBA (colour of sh0 and sigmoid opacity, x255), uint8 wxyz (q/|q| x128 + 128);
                    rows in Morton order
    ply_compressed  PlayCanvas's compressed PLY: `chunk` (per 256 Gaussians: float min/max of
                    position, log scale and colour), `vertex` (4 packed uint32 per Gaussian) and,
                    for SH degree >= 1, `sh` (uchar f_rest_*); Gaussians with opacity <= 1/255 are left out

NaN/Inf Gaussians are removed first (`io.ply.finite_tensors`): gsplat 1.5.3 would otherwise drop
every splat when a single opacity is NaN (B9.2); so are those that exp() or normalising would make
NaN or Inf. Files are written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, get_args

import torch
from gsplat import export_splats

from splatdreamer.errors import ConfigError
from splatdreamer.io.atomic import atomic_write
from splatdreamer.io.ply import finite_tensors, save_ply

ExportFormat = Literal["ply", "splat", "ply_compressed"]
# Longest suffix first: "x.compressed.ply" also ends in ".ply".
_SUFFIXES: tuple[tuple[str, ExportFormat], ...] = (
    (".compressed.ply", "ply_compressed"),
    (".splat", "splat"),
    (".ply", "ply"),
)
_COMPRESSED_MIN_OPACITY = 1.0 / 255.0  # gsplat's splat2ply_bytes_compressed drops sigmoid(o) <= this


def format_from_path(path: str | os.PathLike) -> ExportFormat:
    """The export format a file name asks for: `.compressed.ply`, `.splat` or `.ply` (any case)."""
    name = Path(path).name.lower()
    for suffix, fmt in _SUFFIXES:
        if name.endswith(suffix):
            return fmt
    raise ConfigError(
        f"cannot tell the export format of '{path}' from its name: end it in .ply (standard 3DGS), "
        ".compressed.ply (SuperSplat) or .splat (antimatter15)"
    )


def export(splats: torch.nn.ParameterDict, path: str | os.PathLike, format: ExportFormat) -> None:
    """Write `splats` (means [N, 3], scales [N, 3] log, quats [N, 4] wxyz, opacities [N] logit,
    sh0 [N, 1, 3], shN [N, K-1, 3]) to `path` in `format`, atomically.

    Gaussians holding a NaN or Inf are left out with a RuntimeWarning; `NonFiniteError` if all
    of them do. `ConfigError` for an unknown format, or for "ply_compressed" when no Gaussian is
    visible enough (opacity > 1/255) for that format to keep it. An empty particle gives an
    empty `.splat` (zero rows), which is valid.
    """
    if format not in get_args(ExportFormat):
        raise ConfigError(f"unknown export format {format!r}; choose one of {', '.join(get_args(ExportFormat))}")
    if format == "ply":
        save_ply(splats, path)
        return
    t = finite_tensors(splats, str(path), activated=True)  # both formats store exp(scales) or unit quaternions
    if format == "ply_compressed" and not (torch.sigmoid(t["opacities"]) > _COMPRESSED_MIN_OPACITY).any():
        raise ConfigError(
            f"{path}: no Gaussian has opacity above 1/255, and the compressed PLY format leaves those out; "
            "nothing would remain. Export as .ply instead."
        )
    if t["means"].shape[0] == 0:
        data = b""  # gsplat cannot reshape empty tensors; zero 32-byte rows is the empty .splat
    else:
        data = export_splats(**t, format=format)
    if format == "ply_compressed" and t["shN"].shape[1] == 0:
        data = _drop_empty_sh_element(data)
    with atomic_write(path, "wb") as f:
        f.write(data)


def _drop_empty_sh_element(data: bytes) -> bytes:
    """Remove the property-less `element sh N` gsplat 1.5.3 writes for SH degree 0.

    PlayCanvas (splat-transform `decompress-ply.ts`, `isCompressedPly`) accepts a third element
    only with 9, 24 or 45 f_rest columns, so with an empty one SuperSplat does not recognise the
    file as compressed at all. The element has no bytes of data, so dropping its header line is
    the whole fix.
    """
    end = data.index(b"\nend_header\n")
    head, sh_line = data[:end].rsplit(b"\n", 1)
    assert sh_line.startswith(b"element sh "), sh_line
    return head + data[end:]
