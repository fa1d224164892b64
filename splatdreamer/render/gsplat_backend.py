"""The CUDA backend: gsplat's `rasterization`, imported lazily.

gsplat ships its kernels as sources and builds them on first use (2-15 minutes, notes/gsplat.md B6).
On a machine without CUDA that build can only fail, so nothing here touches gsplat's kernels unless a
CUDA device exists; on a CUDA machine the first check loads (and, once per machine, compiles) them.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


@functools.cache
def unavailable_reason() -> str | None:
    """Why gsplat's CUDA kernels cannot run here, or None when they load.

    Cached: the answer cannot change within a process, and loading is slow the first time.
    """
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        return f"torch sees no CUDA device (torch {torch.__version__}, {build})"
    try:
        from gsplat.cuda._backend import _C  # compiles the extension the first time on this machine
    except (ImportError, OSError, RuntimeError) as e:
        return f"gsplat's CUDA extension failed to load or compile ({type(e).__name__}: {e})"
    if _C is None:
        return "gsplat found neither a prebuilt extension nor a CUDA toolkit (nvcc) to compile its kernels"
    return None


def rasterization(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] wxyz, any length
    scales: Tensor,  # [N, 3] standard deviations (post-activation)
    opacities: Tensor,  # [N] in [0, 1] (post-activation)
    colors: Tensor,  # [N, K, 3] SH coefficients
    viewmats: Tensor,  # [C, 4, 4] world-to-camera
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    *,
    sh_degree: int,
    backgrounds: Tensor | None = None,  # [C, 3]
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    packed: bool = False,
    rasterize_mode: str = "classic",
    absgrad: bool = False,
) -> tuple[Tensor, Tensor, dict]:
    """`gsplat.rasterization(..., render_mode="RGB+ED")`: `[C, H, W, 4]` colours + expected depth,
    `[C, H, W, 1]` alphas and gsplat's `meta`. Same signature as `reference.rasterization`."""
    from gsplat import rasterization as gsplat_rasterization

    # gsplat 1.5.3's packed path cannot take per-camera backgrounds: `rasterize_to_pixels` reads the image
    # dimensions off means2d, which is [nnz, 2] when packed, and rejects a [C, D] background (seen on an H100,
    # docs/benchmarks.md). The background enters a pixel as T·bg with T = 1 - alpha, so it is added here from the
    # returned alphas: the same sum, with its gradient through alpha.
    composite_here = packed and backgrounds is not None
    colors_out, alphas, meta = gsplat_rasterization(
        means=means,
        quats=quats,
        scales=scales,
        opacities=opacities,
        colors=colors,
        viewmats=viewmats,
        Ks=Ks,
        width=width,
        height=height,
        near_plane=near_plane,
        far_plane=far_plane,
        eps2d=eps2d,
        sh_degree=sh_degree,
        packed=packed,
        backgrounds=None if composite_here else backgrounds,
        render_mode="RGB+ED",
        absgrad=absgrad,
        rasterize_mode=rasterize_mode,
    )
    if composite_here:
        rgb = colors_out[..., :3] + (1.0 - alphas) * backgrounds[:, None, None, :]
        colors_out = torch.cat([rgb, colors_out[..., 3:]], dim=-1)
    return colors_out, alphas, meta
