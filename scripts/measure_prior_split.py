"""Which noise levels of a prior make its samples what they are? Sample with one prior above a timestep and
another below it.

A fine-tune aimed at high noise (`toy train --guided-weight`) changed a prompt that it was not aimed at: the
guided fine-tunes drew the red ball paler. Ancestral sampling with the high-noise steps (t >= --split) from one
prior and the low-noise steps from another tells which part of the network carries such a change:

    python scripts/measure_prior_split.py --high /work/ft --low splatdreamer/toy/prior [--split 850] \
        [--prompts "a red ball" "a ball"] [--samples 32] [--cfg 7.5]

Each pair (high, low) is reported with `check_prior`'s colour error, size and recognition (32 samples, 50 DDPM
steps, seed 0, as `toy eval --space image` and `check_prior`). Both priors must share a noise schedule.
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch

from splatdreamer.generate import resolve_prior_name
from splatdreamer.toy import image_sampler
from splatdreamer.toy.model import ToyPriorParts, encode_prompts, load
from splatdreamer.toy.sample import check_prior


class SplitUNet(torch.nn.Module):
    """A stand-in for a toy prior's UNet: the `high` prior's network at t >= split, the `low` one's below, each
    with the prompt embedding of its own text encoder (`contexts`, set per batch of prompts)."""

    def __init__(self, high: ToyPriorParts, low: ToyPriorParts, split: int):
        super().__init__()
        self.high, self.low, self.split = high, low, split
        self.config = high.unet.config
        self.contexts: dict[int, torch.Tensor] = {}

    def forward(self, x, t, encoder_hidden_states=None):
        step = int(torch.as_tensor(t).flatten()[0])  # the sampler gives every row the same t
        source = self.high if step >= self.split else self.low
        return source.unet(x, t, encoder_hidden_states=self.contexts[id(source)])


def split_check(high: ToyPriorParts, low: ToyPriorParts, split: int, prompt: str, samples: int, cfg: float):
    unet = SplitUNet(high, low, split)
    batch = [prompt] * samples
    # sample_images runs prompt and empty prompt in one batch: [cond rows, empty rows]
    unet.contexts = {id(p): torch.cat([encode_prompts(p, batch), encode_prompts(p, [""] * samples)]) for p in (high, low)}
    parts = ToyPriorParts(unet, high.text_encoder, high.tokenizer, high.scheduler)
    (check,) = check_prior(parts, per_prompt=samples, guidance_scale=cfg, seed=0, prompts=(prompt,))
    return check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--high", required=True, help="prior directory used at t >= --split")
    parser.add_argument("--low", required=True, help="prior directory used at t < --split")
    parser.add_argument("--split", type=int, default=850)
    parser.add_argument("--prompts", nargs="+", default=["a red ball"])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--cfg", type=float, default=7.5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    a, b = load(resolve_prior_name(args.high)), load(resolve_prior_name(args.low))
    if a.scheduler.config != b.scheduler.config:
        raise SystemExit("--high and --low have different noise schedules; a split sampler needs one schedule")
    pairs = [("high", a, a), ("low", b, b), ("high above, low below", a, b), ("low above, high below", b, a)]
    print(f"high = {args.high}, low = {args.low}, split at t = {args.split}, CFG {args.cfg}, {args.samples} samples")
    for prompt in args.prompts:
        for name, above, below in pairs:
            c = split_check(above, below, args.split, prompt, args.samples, args.cfg)
            colours = Counter(image_sampler.classify_colors(c.images)) if prompt == "a ball" else None
            extra = "" if colours is None else " colours " + " ".join(f"{k} {v}" for k, v in sorted(colours.items()))
            print(f"{prompt!r:16} {name:24} colour error {c.color_error.mean():.3f} size {c.size.mean():.2f} "
                  f"recognised {c.recognised().float().mean():.0%}{extra}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
