"""Real spherical harmonics up to degree 3, in gsplat's (and 3DGS's) basis order, signs and constants.

The constants are the normalisation factors of Sloan's "Efficient Spherical Harmonic Evaluation"
(JCGT 2013), the same numbers as gsplat's `cuda/_torch_impl._eval_sh_bases_fast` and Inria's
`sh_utils.py`. Colour follows gsplat's `rasterization`: `clamp_min(sum_k coeff_k * Y_k(dir) + 0.5, 0)`,
with `dir = normalize(mean - camera_centre)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

MAX_DEGREE = 3

C0 = 0.28209479177387814  # 1 / (2 sqrt(pi))
C1 = 0.4886025119029199  # sqrt(3 / (4 pi))
C2 = (1.0925484305920792, 0.31539156525252005, 0.5462742152960396)  # sqrt(15/(4pi)), sqrt(5/(16pi)), sqrt(15/(16pi))
C3 = (0.5900435899266435, 2.890611442640554, 0.4570457994644658, 0.3731763325901154, 1.445305721320277)


def sh_bases(degree: int, dirs: Tensor) -> Tensor:
    """Basis values Y_k at unit directions.

    dirs: Tensor,  # [..., 3] unit vectors
    returns: Tensor,  # [..., (degree + 1)^2]
    """
    assert 0 <= degree <= MAX_DEGREE, degree
    x, y, z = dirs.unbind(-1)
    bases = [torch.full_like(x, C0)]
    if degree >= 1:
        bases += [-C1 * y, C1 * z, -C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        bases += [
            C2[0] * x * y,
            -C2[0] * y * z,
            C2[1] * (3.0 * zz - 1.0),
            -C2[0] * x * z,
            C2[2] * (xx - yy),
        ]
    if degree >= 3:
        bases += [
            -C3[0] * y * (3.0 * xx - yy),
            C3[1] * x * y * z,
            -C3[2] * y * (5.0 * zz - 1.0),
            C3[3] * z * (5.0 * zz - 3.0),
            -C3[2] * x * (5.0 * zz - 1.0),
            C3[4] * z * (xx - yy),
            -C3[0] * x * (xx - 3.0 * yy),
        ]
    return torch.stack(bases, dim=-1)


def sh_to_rgb(
    coeffs: Tensor,  # [..., K, 3] SH coefficients, degree 0 first; K >= (degree + 1)^2
    dirs: Tensor,  # [..., 3] viewing directions (camera to Gaussian), any length
    degree: int,
) -> Tensor:
    """View-dependent colour [..., 3]: the first (degree + 1)^2 coefficients, + 0.5, clamped below at 0."""
    k = (degree + 1) ** 2
    assert coeffs.shape[-2] >= k, (coeffs.shape, degree)
    bases = sh_bases(degree, F.normalize(dirs, dim=-1))  # [..., k]
    return torch.clamp_min((bases[..., None] * coeffs[..., :k, :]).sum(dim=-2) + 0.5, 0.0)
