"""How each particle of a many-coloured toy object splits its colours, beside the truth.

For every particle, the share of its foreground (toy eval's 20 scoring views at 64 px, white background) whose
colour is nearest each of the object's true colours; the truth's own shares come first. A particle whose largest
share is 0.9 or more is counted as one colour all over. `toy eval`'s colour error says how far a particle's
colours are from the truth's pixel by pixel; this says what the particle drew instead. On the two-tone cube
(yellow sides, purple front, back, top and bottom), VSD and SDS both draw most particles in one colour all over
(docs/benchmarks.md, "The preset: falling t at CFG 1").

    python scripts/measure_color_split.py --prompt "a two-tone cube" \\
        runs/toy-eval/a_two_tone_cube/vsd-1 runs/toy-eval/a_two_tone_cube/sds-7.5
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor

from splatdreamer.io.ply import load_ply
from splatdreamer.render import render
from splatdreamer.toy import measure
from splatdreamer.toy.evaluate import scoring_views
from splatdreamer.toy.objects import PALETTE, PROMPTS, true_colors, variants

ONE_COLOUR = 0.9  # largest share at or above which a particle counts as one colour all over


@torch.no_grad()
def color_shares(splats, colors: Tensor, size: int = 64) -> Tensor:
    """[C] share of the foreground (alpha > 0.5) of `splats` nearest each of `colors` [C, 3], from the scoring views."""
    views, _ = scoring_views(size)
    out = render(splats, views, torch.ones(len(views), 3))
    rgb = out.rgb.clamp(0, 1).permute(0, 2, 3, 1)[out.alpha[:, 0] > 0.5]  # [P, 3]
    if len(rgb) == 0:
        return torch.zeros(len(colors))
    _, nearest = measure.nearest_color(rgb, colors.to(rgb))
    return torch.bincount(nearest, minlength=len(colors)).float() / len(rgb)


def color_name(rgb: Tensor) -> str:
    return next((name for name, value in PALETTE.items() if torch.allclose(rgb, torch.tensor(value))), "?")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="folders whose particle_*.ply files (at any depth) to read")
    parser.add_argument("--prompt", default="a two-tone cube", choices=PROMPTS)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    colors = true_colors(args.prompt)
    names = [color_name(c) for c in colors]
    print(f"| source | particles | share of {' / '.join(names)} per particle | one colour all over | mean share |")
    print("|---|---|---|---|---|")
    sources = {"truth": [v.splats for v in variants(args.prompt)]}
    for folder in args.folders:
        files = sorted(folder.rglob("particle_*.ply"))
        if not files:
            parser.error(f"{folder}: no particle_*.ply files in it or below it")
        sources[folder] = [load_ply(f, requires_grad=False) for f in files]
    for source, particles in sources.items():
        shares = [color_shares(p, colors, args.size) for p in particles]
        stack = torch.stack(shares)
        one = int((stack.max(dim=1).values >= ONE_COLOUR).sum())
        cells = ", ".join("/".join(f"{x:.2f}" for x in s) for s in shares)
        mean = "/".join(f"{x:.2f}" for x in stack.mean(dim=0))
        print(f"| {source} | {len(shares)} | {cells} | {one} of {len(shares)} | {mean} |", flush=True)


if __name__ == "__main__":
    main()
