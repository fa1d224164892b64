"""Time each part of a VSD generation step, and compare the step with its floor: the network passes alone.

    python scripts/bench_step.py                    # Stable Diffusion 2.1-base sizes at 512 px (a GPU)
    python scripts/bench_step.py --tiny             # the same layout, tiny, at 64 px: a CPU, under a minute
    python scripts/bench_step.py --particles 4 --gaussians 200000

The prior is built from Stable Diffusion 2.1-base's published architecture with random weights (the time
does not depend on the weights) and goes through the real loop: `Generation.train_step` with a
`splatdreamer.timing.PartTimer`, which records CUDA events on a GPU (no extra synchronisation).

The parts of a step:
    render             rasterize every particle x view (forward) and the strategy's pre-backward hook
    encode             VAE encode with gradient (SD) or the pixel scaling (pixel-space prior)
    unet_cfg           the frozen UNet on 2B samples (unconditional + conditional), classifier-free guidance
    phi_forward        phi (LoRA + camera) on B samples
    encode_backward    the score gradient back through the VAE encoder to the pixels
    render_backward    ... and on through the rasterizer to the Gaussians
    optimizer_strategy Adam on every particle and the densify/prune strategy's post-backward hook
    phi_train          phi's diffusion loss forward + backward and its AdamW step
    other              the rest of the step (cameras, noise, timesteps, checks, logging)

The floor is the four network passes a VSD step cannot avoid, each timed alone on random inputs of the
same shapes: VAE encode forward + backward, the UNet on 2B, phi forward on B, phi forward + backward on B.
step / floor - 1 is the engine's own overhead.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

from splatdreamer.config import (
    GenerateConfig, OutputConfig, PriorConfig, SplatConfig, StrategyConfig, VSDConfig,
)  # fmt: skip
from splatdreamer.generate import Generation, resolve_device
from splatdreamer.presets import paper
from splatdreamer.prior import DiffusionPrior
from splatdreamer.timing import PartTimer

PARTS = (
    "render", "encode", "unet_cfg", "phi_forward", "encode_backward", "render_backward", "optimizer_strategy",
    "phi_train",
)  # fmt: skip

# Stable Diffusion 2.1-base, from the configs published with the weights
# (huggingface.co/stabilityai/stable-diffusion-2-1-base: unet/config.json, vae/config.json,
# text_encoder/config.json, scheduler/scheduler_config.json). Only architecture keys; the rest are
# diffusers' / transformers' defaults, which match.
SD21_BASE_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024,
    use_linear_projection=True,
    norm_num_groups=32,
)
SD21_BASE_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)
SD21_BASE_TEXT = dict(  # OpenCLIP ViT-H/14's text tower, penultimate layer (23 of 24 layers kept)
    vocab_size=49408,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=512,
)
SD21_BASE_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="epsilon",
)  # fmt: skip

# The tiny size: the same block types at a few per cent of the width, for a CPU.
TINY_UNET = SD21_BASE_UNET | dict(
    sample_size=8, block_out_channels=(32, 64, 64, 64), attention_head_dim=(2, 4, 4, 4), cross_attention_dim=64,
    layers_per_block=1, norm_num_groups=8,
)  # fmt: skip
TINY_VAE = SD21_BASE_VAE | dict(
    block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=8, sample_size=64
)
TINY_TEXT = SD21_BASE_TEXT | dict(
    vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
    projection_dim=64,
    bos_token_id=0, eos_token_id=1, pad_token_id=1,  # the toy tokenizer's ids
)


@dataclass
class BenchConfig:
    """Time a VSD step part by part for each particle count; print a markdown table."""

    tiny: bool = False
    """A tiny model of the same layout at 64 px (CPU); otherwise Stable Diffusion 2.1-base at 512 px."""
    particles: tuple[int, ...] = (1, 4)
    """Particle counts to time (the paper uses 4)."""
    views_per_particle: int = 1
    """Cameras per particle per step (official batch 1)."""
    gaussians: int | None = None
    """Gaussians per particle; None = 100 000 (2 000 with --tiny)."""
    resolution: int | None = None
    """Render size; None = the prior's (512, or 64 with --tiny)."""
    warmup: int = 3
    """Untimed steps first (cuDNN autotuning, allocator warm-up, lazy gsplat init)."""
    steps: int = 10
    """Timed steps; each part's median over them is reported."""
    mode: str = "vsd"
    """vsd or sds."""
    device: str = "auto"
    """auto, cuda or cpu."""
    dtype: str = "auto"
    """Of the frozen weights: auto = float16 on CUDA, float32 on CPU."""
    channels_last: bool = False
    """Candidate speed-up: the UNet and VAE in channels-last memory format."""
    compile: bool = False
    """Candidate speed-up: torch.compile the UNet's and the VAE encoder's forward (the warm-up steps compile)."""
    seed: int = 0
    json: Path | None = None
    """Also write the numbers to this JSON file."""


def build_prior(config: BenchConfig, device: torch.device) -> DiffusionPrior:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from splatdreamer.toy.model import build_tokenizer

    unet_cfg, vae_cfg, text_cfg = (TINY_UNET, TINY_VAE, TINY_TEXT) if config.tiny else (
        SD21_BASE_UNET, SD21_BASE_VAE, SD21_BASE_TEXT
    )  # fmt: skip
    dtype = None if config.dtype == "auto" else getattr(torch, config.dtype)
    torch.manual_seed(config.seed)
    with torch.device(device):  # initialise on the device: SD's UNet takes long to initialise on a CPU
        unet = UNet2DConditionModel(**unet_cfg)
        vae = AutoencoderKL(**vae_cfg)
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_cfg))
    scheduler = DDPMScheduler(**SD21_BASE_SCHEDULER)
    # Token ids of the toy vocabulary (< 100) are valid in any CLIP vocabulary; the text is encoded once.
    tokenizer = build_tokenizer(max_length=text_cfg["max_position_embeddings"])
    prior = DiffusionPrior(unet, text_encoder, tokenizer, scheduler, vae, device=device, dtype=dtype)
    if config.channels_last:
        prior.unet.to(memory_format=torch.channels_last)
        prior.vae.to(memory_format=torch.channels_last)
    if config.compile:
        # The forward, not the module: phi switches the module's adapters and class embedding in place.
        prior.unet.forward = torch.compile(prior.unet.forward)
        prior.vae.encoder.forward = torch.compile(prior.vae.encoder.forward)
    return prior


def generation_config(config: BenchConfig, particles: int, device: torch.device) -> GenerateConfig:
    gaussians = config.gaussians or (2_000 if config.tiny else 100_000)
    return GenerateConfig(
        prompt="a red ball",
        particles=particles,
        steps=100_000,  # the learning-rate schedules stay near their start; no refinement in the timed steps
        seed=config.seed,
        device=device.type,
        prior=PriorConfig(name="bench (built in memory)", dtype=config.dtype),
        vsd=VSDConfig(mode=config.mode, views_per_particle=config.views_per_particle),
        splats=SplatConfig(num_init=gaussians, resolution=config.resolution),
        strategy=StrategyConfig(refine_start=10**9),
        output=OutputConfig(preview_every=0, checkpoint_every=0),
    )


def time_call(fn, device: torch.device, warmup: int, repeats: int) -> float:
    """Median milliseconds of fn() after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        timer = PartTimer(device)
        with timer.part("call"):
            fn()
        times.append(timer.read()["call"])
    return statistics.median(times)


def floor_parts(prior: DiffusionPrior, batch: int, size: int, config: BenchConfig, device: torch.device) -> dict:
    """The network passes of one step on random inputs, each timed alone (ms)."""
    g = torch.Generator(device=device).manual_seed(config.seed)
    text = prior.text_embeddings("a red ball")
    cond, uncond = text.plain(batch), text.negative(batch)
    pixels = torch.rand(batch, 3, size, size, device=device, generator=g, requires_grad=True)
    latents = prior.encode_images(pixels.detach()).detach()
    x_t = torch.randn(latents.shape, device=device, generator=g)
    t = torch.randint(20, 980, (batch,), device=device, generator=g)
    camera = torch.randn(batch, prior.camera_dim, device=device, generator=g)

    def vae():
        prior.encode_images(pixels).sum().backward()

    def unet():
        prior.eps_pretrained(x_t, t, cond, uncond, 7.5)

    def phi_forward():
        prior.eps_phi(x_t, t, cond, camera)

    def phi_train():
        prior.phi_loss(latents, cond, camera, generator=g).backward()

    warm, reps = min(config.warmup, 2), max(config.steps // 2, 1)
    parts = {"vae_encode_fwd_bwd": time_call(vae, device, warm, reps), "unet_cfg": time_call(unet, device, warm, reps)}
    if config.mode == "vsd":
        parts["phi_forward"] = time_call(phi_forward, device, warm, reps)
        parts["phi_fwd_bwd"] = time_call(phi_train, device, warm, reps)
    for p in prior.phi_parameters():
        p.grad = None
    return parts


def time_adapter_switch(prior: DiffusionPrior) -> dict[str, float]:
    """Milliseconds of one on/off pair of phi's LoRA switch, three ways, side by side (CPU time: no kernels)."""
    layers, fast = prior._adapter_layers, prior._adapter_flag

    def diffusers_switch():  # what splatdreamer did first: the UNet-wide switch of diffusers' PEFT mixin
        prior.phi_unet.enable_adapters()
        prior.phi_unet.disable_adapters()

    def peft_layers():  # peft's public per-layer switch (the fallback)
        for layer in layers:
            layer.enable_adapters(True)
        for layer in layers:
            layer.enable_adapters(False)

    def flag():  # the one attribute a LoRA forward reads
        prior._set_adapters(True)
        prior._set_adapters(False)

    try:
        cpu = torch.device("cpu")
        times = {
            "diffusers": time_call(diffusers_switch, cpu, 2, 20),
            "peft_layers": time_call(peft_layers, cpu, 2, 20),
        }
        if fast:
            times["flag"] = time_call(flag, cpu, 2, 20)
        return times
    finally:
        prior._phi_off()
        for p in prior.phi_parameters():
            p.requires_grad_(True)


def bench(config: BenchConfig, particles: int, prior: DiffusionPrior, device: torch.device) -> dict:
    gen_config = generation_config(config, particles, device)
    with tempfile.TemporaryDirectory() as run_dir:
        run = Generation(gen_config, Path(run_dir), prior=prior)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(config.warmup):
            run.train_step()
        steps = []
        for _ in range(config.steps):
            timer = PartTimer(device)
            with timer.part("step"):
                run.train_step(timer)
            steps.append(timer.read())
        peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
        median = {name: statistics.median(s.get(name, 0.0) for s in steps) for name in ("step", *PARTS)}
        median["other"] = max(median["step"] - sum(median[p] for p in PARTS), 0.0)
        batch = particles * config.views_per_particle
        floor = floor_parts(prior, batch, run.resolution, config, device)
        del run
    return {
        "particles": particles,
        "batch": batch,
        "resolution": gen_config.splats.resolution or prior.resolution,
        "gaussians_per_particle": gen_config.splats.num_init,
        "parts_ms": median,
        "floor_ms": floor,
        "floor_total_ms": sum(floor.values()),
        "step_over_floor": median["step"] / sum(floor.values()),
        "peak_gpu_memory_gib": None if peak is None else peak / 2**30,
    }


def table(results: list[dict], paper_steps: int) -> str:
    heads = " | ".join(f"{r['particles']} particle{'s' if r['particles'] > 1 else ''}: ms | share" for r in results)
    lines = [f"| part | {heads} |", "|---|" + "---|---|" * len(results)]
    for name in (*PARTS, "other", "step"):
        cells = []
        for r in results:
            ms, step = r["parts_ms"][name], r["parts_ms"]["step"]
            cells.append(f"{ms:.1f} | {100 * ms / step:.0f} %")
        lines.append(f"| {'**step**' if name == 'step' else name} | " + " | ".join(cells) + " |")
    for key in results[0]["floor_ms"]:
        lines.append(f"| floor: {key} | " + " | ".join(f"{r['floor_ms'][key]:.1f} | " for r in results) + " |")
    lines.append("| **floor** | " + " | ".join(f"{r['floor_total_ms']:.1f} | " for r in results) + " |")
    lines.append("| step / floor | " + " | ".join(f"{r['step_over_floor']:.2f} | " for r in results) + " |")
    if results[0]["peak_gpu_memory_gib"] is not None:
        memory = " | ".join(f"{r['peak_gpu_memory_gib']:.1f} | " for r in results)
        lines.append(f"| peak GPU memory (GiB) | {memory} |")
    lines.append(
        f"| {paper_steps} steps (paper preset), min | "
        + " | ".join(f"{r['parts_ms']['step'] * paper_steps / 60e3:.1f} | " for r in results)
        + " |"
    )
    return "\n".join(lines)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    cpu = platform.processor() or platform.machine()
    return f"CPU ({cpu}, {torch.get_num_threads()} threads), torch {torch.__version__}"


def main(argv: list[str] | None = None) -> list[dict]:
    config = tyro.cli(BenchConfig, args=argv, description=__doc__.split("\n")[0])
    device = resolve_device(config.device)
    start = time.perf_counter()
    prior = build_prior(config, device)
    switch = time_adapter_switch(prior)
    results = [bench(config, k, prior, device) for k in config.particles]
    paper_steps = paper().steps
    size = "tiny (--tiny)" if config.tiny else "Stable Diffusion 2.1-base"
    size += "".join(f", {flag}" for flag in ("channels_last", "compile") if getattr(config, flag))
    print(
        f"{size}, {results[0]['resolution']} px, {results[0]['gaussians_per_particle']} Gaussians per particle, "
        f"{config.views_per_particle} view(s) per particle, {config.mode}, median of {config.steps} steps after "
        f"{config.warmup} warm-up; {describe(device)}\n"
    )
    print(table(results, paper_steps))
    print(
        f"\nphi's LoRA on/off, {len(prior._adapter_layers)} layers: "
        + ", ".join(f"{name} {ms:.2f} ms" for name, ms in switch.items())
        + " (a VSD step switches it on and off twice)"
    )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\nprocess peak RSS {rss:.1f} GiB; benchmark took {time.perf_counter() - start:.0f} s")
    if config.json is not None:
        payload = {"config": dataclasses.asdict(config) | {"json": str(config.json)}, "device": describe(device),
                   "results": results, "adapter_switch_ms": switch}  # fmt: skip
        config.json.write_text(json.dumps(payload, indent=2))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
