"""Rendering: one particle seen from C cameras -> images, alpha, depth and what gsplat's strategies read.

    out = render(splats, cameras, background)   # out.rgb [C, 3, H, W]

Two backends draw the same pictures by the same conventions (gsplat's, notes/gsplat.md B1/B8):
`gsplat` (CUDA kernels) and `reference` (plain PyTorch, runs anywhere, differentiable by autograd).
Images leave this module channels-first; this is the one place the `[C, H, W, 3]` of the rasterizers
becomes `[C, 3, H, W]`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from splatdreamer.cameras import Cameras
from splatdreamer.errors import BackendUnavailableError, ConfigError
from splatdreamer.render import gsplat_backend, reference
from splatdreamer.splats import activate, check_particle, sh_degree_of

BACKENDS = ("auto", "gsplat", "reference")
RASTERIZE_MODES = ("classic", "antialiased")


@dataclass
class RenderOutput:
    rgb: Tensor  # [C, 3, H, W] composited over the background; in [0, 1] up to SH overshoot (not clamped above)
    alpha: Tensor  # [C, 1, H, W] accumulated opacity
    depth: Tensor  # [C, 1, H, W] expected camera-space z: sum(w z) / max(alpha, 1e-10)
    info: dict  # gsplat's `meta` keys: means2d [C, N, 2] (pixels, non-leaf), radii [C, N, 2] int32, depths,
    # conics, opacities, width, height, n_cameras, gaussian_ids (None unless packed: then [nnz, ...] rows)


def resolve_backend(name: str, device: torch.device | str) -> str:
    """The backend that will render tensors on `device`: `name` is "auto", "gsplat" or "reference".

    "auto" picks gsplat on a CUDA device whose kernels load, else the reference rasterizer. Asking for
    gsplat where it cannot run raises `BackendUnavailableError`; on a CPU that is decided without
    touching gsplat's kernels (which would try to compile them).
    """
    device = torch.device(device)
    if name not in BACKENDS:
        raise ConfigError(f"unknown rendering backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "reference":
        return name
    if device.type != "cuda":
        if name == "gsplat":
            raise BackendUnavailableError(
                f"the gsplat backend runs CUDA kernels only, but the Gaussians are on '{device}'. "
                "Use the reference backend (pure PyTorch, any device: --backend reference, or backend='reference' in "
                "Python) or move the particle to a CUDA device."
            )
        return "reference"
    reason = gsplat_backend.unavailable_reason()
    if reason is None:
        return "gsplat"
    if name == "gsplat":
        raise BackendUnavailableError(
            f"the gsplat backend is unavailable: {reason}. Use the reference backend (--backend reference, or "
                "backend='reference' in Python), or install a CUDA toolkit "
            "matching torch.version.cuda so gsplat can compile its kernels (run `splatdreamer doctor`)."
        )
    warnings.warn(f"gsplat's kernels are unavailable ({reason}); rendering with the slower reference backend")
    return "reference"


def render(
    splats: torch.nn.ParameterDict,
    cameras: Cameras,
    background: Tensor | None = None,  # [3] or [C, 3]; None = black
    backend: str = "auto",
    sh_degree: int | None = None,
    rasterize_mode: str = "classic",
    packed: bool = False,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    absgrad: bool = False,
) -> RenderOutput:
    """Render one particle (pre-activation parameters, `splats.py`) from every camera.

    sh_degree: SH bands to use, 0..the particle's own degree (None = its own), for progressive SH.
    rasterize_mode, packed, eps2d, near_plane, far_plane, absgrad: as in `gsplat.rasterization`; pass
    the same `packed` to `DefaultStrategy.step_post_backward`.
    """
    check_particle(splats)
    if not isinstance(cameras, Cameras) or len(cameras) == 0:
        raise ConfigError(f"render needs one or more Cameras (splatdreamer.cameras), got "
                          f"{len(cameras) if isinstance(cameras, Cameras) else type(cameras).__name__}")  # fmt: skip
    if cameras.viewmats.dtype != splats["means"].dtype:  # float64 is for gradient checks, with float64 cameras
        raise ConfigError(f"the particle is {str(splats['means'].dtype).removeprefix('torch.')} and the cameras "
                          f"{str(cameras.viewmats.dtype).removeprefix('torch.')}; particles are float32 (convert "
                          "every tensor with .float())")  # fmt: skip
    device = splats["means"].device
    backend = resolve_backend(backend, device)
    if rasterize_mode not in RASTERIZE_MODES:
        raise ConfigError(f"unknown rasterize_mode {rasterize_mode!r}; choose 'classic' or 'antialiased'")
    own_degree = sh_degree_of(splats)
    if sh_degree is None:
        sh_degree = own_degree
    if not 0 <= sh_degree <= own_degree:
        raise ConfigError(f"sh_degree must lie in 0..{own_degree} (the particle's SH degree), got {sh_degree}")
    n_cams = len(cameras)
    if background is not None:
        if not isinstance(background, Tensor):  # a colour as a tuple or list, e.g. (1, 1, 1)
            try:
                background = torch.as_tensor(background, dtype=torch.float32)
            except (TypeError, ValueError, RuntimeError):
                raise ConfigError(f"background must be an RGB colour such as (1, 1, 1), got {background!r}") from None
        if background.shape not in ((3,), (n_cams, 3)):
            raise ConfigError(f"background must have shape [3] or [{n_cams}, 3], got {list(background.shape)}")
        background = background.to(device=device, dtype=splats["means"].dtype).expand(n_cams, 3)
    cameras = cameras.to(device)  # a no-op when they already match; saves every caller the move

    p = activate(splats)
    rasterization = gsplat_backend.rasterization if backend == "gsplat" else reference.rasterization
    colors, alphas, info = rasterization(
        p.means, p.quats, p.scales, p.opacities, p.sh, cameras.viewmats, cameras.Ks, cameras.width, cameras.height,
        sh_degree=sh_degree, backgrounds=background, near_plane=near_plane, far_plane=far_plane, eps2d=eps2d,
        packed=packed, rasterize_mode=rasterize_mode, absgrad=absgrad,
    )  # fmt: skip
    colors = colors.permute(0, 3, 1, 2)  # [C, 4, H, W]
    return RenderOutput(rgb=colors[:, :3], alpha=alphas.permute(0, 3, 1, 2), depth=colors[:, 3:], info=info)
