"""Time one toy-prior training step (UNet forward + backward + AdamW, batch 32) at several UNet sizes, side by side.

    python scripts/bench_prior_capacity.py                       # the shipped size and three larger ones
    python scripts/bench_prior_capacity.py --widths 32,64,64 64,128,128 --layers 1 1

What it answers: how many steps a wider or deeper toy prior gets inside issue 13's budget (90 minutes on the
2-core CPU) compared with the shipped size. Every size runs in the same process, one after another, on random
inputs of the training batch's shapes (the time does not depend on the weights or the data), so the ratios are
what to read; the seconds are this machine's. docs/benchmarks.md, "The sixth toy prior", has the figures.
"""

from __future__ import annotations

import argparse
import time

import torch

from splatdreamer.toy.model import ToyModelConfig, build


def step_seconds(config: ToyModelConfig, batch: int, steps: int, warmup: int = 2) -> tuple[int, float]:
    """UNet parameters and mean seconds per training step of a prior of `config`'s size."""
    unet = build(config).unet
    params = sum(p.numel() for p in unet.parameters())
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, config.resolution, config.resolution, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    text = torch.randn(batch, config.max_length, config.text_hidden_size, generator=g)
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        loss = unet(x, t, encoder_hidden_states=text).sample.square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return params, (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", nargs="+", default=["32,64,64", "48,96,96", "64,128,128", "32,64,64"],
                        help="UNet block_out_channels per size, comma-separated")
    parser.add_argument("--layers", nargs="+", type=int, default=[1, 1, 1, 2], help="layers_per_block per size")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if len(args.widths) != len(args.layers):
        parser.error(f"--widths gives {len(args.widths)} sizes and --layers {len(args.layers)}; give one of each")
    torch.set_num_threads(args.threads)
    print("| UNet channels | layers per block | parameters | s / step | × the first |")
    print("|---|---|---|---|---|")
    first = None
    for widths, layers in zip(args.widths, args.layers):
        config = ToyModelConfig(block_out_channels=tuple(int(w) for w in widths.split(",")), layers_per_block=layers)
        params, seconds = step_seconds(config, args.batch, args.steps)
        first = first or seconds
        print(f"| {widths} | {layers} | {params / 1e6:.2f} M | {seconds:.2f} | {seconds / first:.2f} |", flush=True)


if __name__ == "__main__":
    main()
