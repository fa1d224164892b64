"""Compare the gsplat (CUDA) and reference (PyTorch) rendering backends on random scenes.

    python scripts/check_gsplat_parity.py            # needs a CUDA GPU; compiles gsplat's kernels once

Both backends render the same particle, from C=3 orbit cameras with per-camera backgrounds, over every
combination of image size / Gaussian count, SH degree (None = the particle's own degree 3, then 0 and 1),
rasterize mode and packed mode. The same random upstream gradient flows back through rgb, alpha and
depth. The table lists the largest absolute differences of the images and of the gradients w.r.t.
every parameter; gradients are also given relative to the largest gsplat gradient of that parameter.
For reference: gsplat's own tests accept 1e-4 for images of its PyTorch pipeline vs. CUDA, and 1e-3 to
5e-3 (relative) for gradients, since CUDA uses fast-math exponentials and float32 transmittance.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass

import torch

from splatdreamer import cameras as cams
from splatdreamer import splats as S
from splatdreamer.render import render, resolve_backend


@dataclass(frozen=True)
class Case:
    width: int
    height: int
    num: int
    sh_degree: int | None
    rasterize_mode: str
    packed: bool


SCENES = [(64, 64, 1_000), (128, 96, 10_000), (256, 256, 30_000)]
SH_DEGREES = [None, 0, 1]
SEED = 0


def random_particle(num: int, generator: torch.Generator) -> torch.nn.ParameterDict:
    """A degree-3 particle in a ball of radius 0.5 with varied sizes, opacities, rotations and SH."""
    p = S.random_ball(num, radius=0.5, sh_degree=3, generator=generator)
    with torch.no_grad():
        # Sizes span 0.3x to 3x the initial spacing, so some Gaussians cover many pixels.
        p["scales"] += torch.log(0.3 + 2.7 * torch.rand(num, 3, generator=generator))
        p["opacities"].copy_(2.0 * torch.randn(num, generator=generator))
        p["sh0"].copy_(torch.randn(num, 1, 3, generator=generator))
        p["shN"].copy_(0.3 * torch.randn(num, 15, 3, generator=generator))
    return p


def run_case(case: Case) -> dict[str, float]:
    g = torch.Generator().manual_seed(SEED)
    params = random_particle(case.num, g)
    views = cams.sample(3, cams.DEFAULT_RANGES, case.width, case.height, g).to("cuda")
    background = torch.rand(3, 3, generator=g).cuda()
    up = {
        k: torch.randn(3, c, case.height, case.width, generator=g).cuda()
        for k, c in (("rgb", 3), ("alpha", 1), ("depth", 1))
    }
    results = {}
    for backend in ("gsplat", "reference"):
        p = S.detached_copy(params).cuda()
        out = render(
            p, views, background, backend=backend, sh_degree=case.sh_degree,
            rasterize_mode=case.rasterize_mode, packed=case.packed,
        )  # fmt: skip
        # Depth enters weighted by alpha: near-empty pixels hold tiny / tiny, which neither backend owns.
        loss = (out.rgb * up["rgb"]).sum() + (out.alpha * up["alpha"]).sum()
        loss = loss + (out.depth * out.alpha * up["depth"]).sum()
        loss.backward()
        results[backend] = out, {k: v.grad for k, v in p.items()}
    (g_out, g_grads), (r_out, r_grads) = results["gsplat"], results["reference"]
    lit = g_out.alpha > 0.05
    row = {
        "rgb": (r_out.rgb - g_out.rgb).abs().max().item(),
        "alpha": (r_out.alpha - g_out.alpha).abs().max().item(),
        "depth(lit)": (r_out.depth - g_out.depth)[lit].abs().max().item() if lit.any() else 0.0,
    }
    for key in S.KEYS:
        diff = (r_grads[key] - g_grads[key]).abs().max().item() if g_grads[key].numel() else 0.0
        scale = g_grads[key].abs().max().item() if g_grads[key].numel() else 0.0
        row[f"d{key}"] = diff
        row[f"d{key}/max"] = diff / scale if scale > 0 else 0.0
    return row


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("check_gsplat_parity: no CUDA device here; gsplat's kernels need one. Run it on a CUDA machine.")
    if resolve_backend("auto", "cuda") != "gsplat":
        sys.exit("check_gsplat_parity: gsplat's CUDA kernels did not load; see `splatdreamer doctor`.")
    cases = [
        Case(w, h, n, d, m, pk)
        for (w, h, n), d, m, pk in itertools.product(SCENES, SH_DEGREES, ("classic", "antialiased"), (False, True))
    ]
    header = None
    for case in cases:
        row = run_case(case)
        if header is None:
            header = ["size", "N", "sh", "mode", "packed", *row]
            print("| " + " | ".join(header) + " |")
            print("|" + "---|" * len(header))
        label = [f"{case.width}x{case.height}", str(case.num), str(case.sh_degree), case.rasterize_mode]
        label.append(str(case.packed))
        print("| " + " | ".join(label + [f"{v:.1e}" for v in row.values()]) + " |", flush=True)


if __name__ == "__main__":
    main()
