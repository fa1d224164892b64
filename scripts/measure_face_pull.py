"""Does the toy prior ask a one-colour cube for the two-tone cube's faces, and at which noise levels?

The two-tone cube's particles come out one colour all over, yellow or purple (docs/benchmarks.md,
`scripts/measure_color_split.py`). SDS's and VSD's step moves a render x0 towards the prior's denoised estimate
x0_hat = (x_t - sqrt(1 - abar) eps(x_t)) / sqrt(abar) (their gradient is -sqrt(abar / (1 - abar)) (x0_hat - x0)
times w(t)), so x0_hat's colour on each face is where the step pulls that face. This script renders cubes (all
purple, all yellow, and the true two-tone cube) from random generation cameras, noises each with fresh noise at
chosen t, and reports, over the pixels where the true cube shows its yellow faces and over those where it shows
purple ones, the share whose x0_hat is nearer the true colour of that face than the other one:

    python scripts/measure_face_pull.py [--t 900 700 500 300 100] [--cfg 1 7.5] [--draws 64] [--prior toy|exact]

The pretrained branch sees each camera's view-dependent prompt ("a two-tone cube, side view"), as `generate`
gives it; `--plain` gives it the plain prompt. `--prior exact` asks the exact denoiser of the training images
instead (`toy.exact.exact_eps`; the prompt's images of that camera's view label, or all of the prompt's with
`--plain`; the empty prompt's images weighted as `toy train` weights them; `toy.exact.ExactPrior`): what a
perfectly trained prior
would ask. A one-colour cube whose wrong faces are pulled to the other colour
at some t can be repainted by the loop there; one whose faces are pulled to its own colour cannot.
"""

from __future__ import annotations

import argparse

import torch

from splatdreamer.cameras import DEFAULT_RANGES, VIEW_LABELS, sample
from splatdreamer.generate import resolve_prior_name
from splatdreamer.prior import DiffusionPrior
from splatdreamer.prior.text import view_prompt
from splatdreamer.toy.data import ToyDataConfig, caption_groups, load_or_render, render_views, unconditional_weights
from splatdreamer.toy.exact import ExactPrior
from splatdreamer.toy.measure import foreground, interior, nearest_color
from splatdreamer.toy.objects import PALETTE
from splatdreamer.toy.objects import _cube as cube  # (prompt, name, +-X faces' colour, the others')

PROMPT = "a two-tone cube"
SIDES, REST = "yellow", "purple"  # the true cube: yellow +-X faces, purple others (toy/objects.py)
FACE_COLORS = torch.tensor([PALETTE[SIDES], PALETTE[REST]])  # index 0: the sides' colour, 1: the others'


def face_masks(truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[V, 3, H, W] renders of the true cube -> ([V, H, W] yellow-face pixels, [V, H, W] purple-face pixels),
    both inside the silhouette less its anti-aliased rim."""
    inside = interior(foreground(truth))
    _, which = nearest_color(truth.permute(0, 2, 3, 1), FACE_COLORS)
    return inside & (which == 0), inside & (which == 1)


def exact_prior(alphas_cumprod: torch.Tensor, data_dir: str) -> ExactPrior:
    """The exact denoisers of the training images for the empty prompt (weighted as `toy train` weights it),
    the prompt and each of its view-dependent forms (as `scripts/measure_exact_world.py --views` builds them)."""
    data = load_or_render(ToyDataConfig(), data_dir)
    images = data.images.float() / 255
    groups = caption_groups(data)
    captions = [PROMPT, *(view_prompt(PROMPT, label) for label in VIEW_LABELS)]
    sets = {"": (images, unconditional_weights(data))}
    sets.update({c: (images[groups[c]], torch.ones(len(groups[c]))) for c in captions if c in groups})
    return ExactPrior(sets, alphas_cumprod)


def face_pull(
    eps_fn, x0: torch.Tensor, masks: tuple[torch.Tensor, torch.Tensor], t: int, cfg: float, abar: torch.Tensor
) -> tuple[float, float, list[float]]:
    """Noise [V, 3, H, W] renders `x0` in [-1, 1] at `t` (noise seeded by t) and denoise them with
    eps_fn(x_t, [V] t, cfg) -> (share of yellow-face pixels whose x0_hat is nearer yellow than purple, the same
    for purple faces and purple, x0_hat's mean RGB over the yellow faces in [0, 1])."""
    yellow_px, purple_px = masks
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(t))
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    eps = eps_fn(x_t, torch.full((len(x0),), t), cfg)
    x0_hat = ((x_t - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1) / 2 + 0.5
    _, which = nearest_color(x0_hat.permute(0, 2, 3, 1), FACE_COLORS)
    right_y = (which == 0)[yellow_px].float().mean().item()
    right_p = (which == 1)[purple_px].float().mean().item()
    return right_y, right_p, x0_hat.permute(0, 2, 3, 1)[yellow_px].mean(0).tolist()


@torch.no_grad()
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--t", type=int, nargs="+", default=[900, 700, 500, 300, 100])
    ap.add_argument("--cfg", type=float, nargs="+", default=[1.0, 7.5])
    ap.add_argument("--draws", type=int, default=64, help="cameras and noise draws per start")
    ap.add_argument("--prior", default="toy", help="the prior to measure: toy (the shipped one) or a directory")
    ap.add_argument("--data-dir", default=".toydata", help="cache of the rendered dataset (as `toy train`)")
    ap.add_argument("--plain", action="store_true", help="the plain prompt instead of the view-dependent ones")
    args = ap.parse_args(argv)

    prior = DiffusionPrior.from_pretrained(resolve_prior_name("toy" if args.prior == "exact" else args.prior))
    abar_all = prior.alphas_cumprod.cpu()
    if args.prior == "exact":
        prior = exact_prior(abar_all, args.data_dir)
    size = prior.resolution
    cameras = sample(args.draws, DEFAULT_RANGES, size, size, torch.Generator().manual_seed(0))
    text = prior.text_embeddings(PROMPT)
    cond = text.plain(args.draws) if args.plain else text.for_views(cameras.view_labels())

    def eps_fn(x_t: torch.Tensor, t: torch.Tensor, cfg: float) -> torch.Tensor:
        return prior.eps_pretrained(x_t, t, cond, text.negative(len(x_t)), cfg)

    starts = {name: cube(PROMPT, name, sides, rest) for name, sides, rest in
              (("all purple", REST, REST), ("all yellow", SIDES, SIDES), ("two-tone (truth)", SIDES, REST))}  # fmt: skip
    masks = face_masks(render_views(starts["two-tone (truth)"], cameras))

    print(f"prior {args.prior}, {'plain' if args.plain else 'view-dependent'} prompt, {args.draws} cameras; "
          f"share of face pixels whose x0_hat is nearer the face's true colour")  # fmt: skip
    print("| start | t | CFG | yellow faces -> yellow | purple faces -> purple | x0_hat yellow-face mean RGB |")
    print("|---|---|---|---|---|---|")
    for name, obj in starts.items():
        x0 = render_views(obj, cameras) * 2 - 1
        for t in args.t:
            for cfg in args.cfg:
                right_y, right_p, mean_y = face_pull(eps_fn, x0, masks, t, cfg, abar_all[t])
                rgb = ", ".join(f"{c:.2f}" for c in mean_y)
                print(f"| {name} | {t} | {cfg:g} | {right_y:.2f} | {right_p:.2f} | ({rgb}) |", flush=True)


if __name__ == "__main__":
    main()
