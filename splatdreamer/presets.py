"""Named starting points for `splatdreamer generate --preset NAME`; flags override them."""

from __future__ import annotations

from typing import Callable

from splatdreamer.config import TOY_PRIOR, GenerateConfig, OutputConfig, PriorConfig, SplatConfig, StrategyConfig, VSDConfig


def default() -> GenerateConfig:
    """Stable Diffusion 2.1-base at 512 px, one particle, 2000 steps."""
    return GenerateConfig()


def paper() -> GenerateConfig:
    """ProlificDreamer's setting: 4 particles, CFG 7.5, t annealed to [20, 500] (official run.sh / README)."""
    return GenerateConfig(particles=4, steps=5000, vsd=VSDConfig(anneal_step=2000))


def fast() -> GenerateConfig:
    """A quick look with Stable Diffusion: 600 steps of 4 views at 256 px."""
    return GenerateConfig(
        steps=600,
        vsd=VSDConfig(views_per_particle=4, anneal_step=300),
        splats=SplatConfig(resolution=256, lr_means=3e-3),
        strategy=StrategyConfig(refine_start=50, refine_every=50),
    )


def toy() -> GenerateConfig:
    """The embedded toy prior on a CPU in a few minutes: 4 particles x 1 view per step at 32 px, 300 steps.

    4 particles x 1 view rather than 1 x 4 (the same batch): the red ball scored IoU 0.944 against 0.776
    (docs/benchmarks.md), and VSD is about particles. Each particle starts from its own random colour: from grey,
    all four particles of "a ball" took the same colour, with VSD and with SDS alike (docs/benchmarks.md).
    t falls from 980 to 20 over the run, and VSD guides at CFG 1: a particle chooses its colour while t is high,
    where phi tells the particles apart, and keeps it, so guidance is not needed to pull a wrong start over; the
    toy prior's own CFG-1 samples are balanced and of the true size, where at 7.5 they are 94 % red and the cone
    1.4x too big. Against random t at CFG 7.5, mean IoU over the toy prompts rose from 0.86 to 0.90 in the same
    300 steps; over 1000 steps "a ball" takes all four colours where SDS-7.5 from the same starts takes 1.3
    (docs/benchmarks.md, "The preset: falling t at CFG 1"). SDS keeps DreamFusion's 100 (`cfg_scale_sds`) unless
    --vsd.cfg-scale is given.
    VSD asks phi only above t = 850, the noise levels where a ball's colour is chosen: below about t = 900 each
    noised render is told apart from the other particles', so the score of the particles' own distribution is
    the noise (SDS's term) and the LoRA adds mostly its fitting error. phi also trains only there
    (phi_timesteps="asked"; docs/benchmarks.md, "phi trained where it is asked").
    """
    return GenerateConfig(
        steps=300,
        particles=4,
        prior=PriorConfig(name=TOY_PRIOR, phi_lr=1e-3, phi_warmup_steps=20, phi_timesteps="asked"),
        # anneal_step counts only for --vsd.t-schedule random: with --vsd.cfg-scale-vsd 7.5 that is the earlier
        # preset, measured in docs/benchmarks.md.
        vsd=VSDConfig(views_per_particle=1, cfg_scale_vsd=1.0, t_schedule="decreasing", anneal_step=150,
                      phi_min_t=850),  # fmt: skip
        splats=SplatConfig(num_init=1024, lr_means=3e-3, lr_means_final=1e-4, init_color="random"),
        # grow_grad2d 0.5: at 0.05 the first refinement split 83 % of the Gaussians; at 0.5 the cone and the cube
        # score the same with half as many Gaussians (docs/benchmarks.md, scripts/measure_densify.py).
        strategy=StrategyConfig(refine_start=50, refine_every=50, grow_grad2d=0.5),
        output=OutputConfig(preview_every=100, checkpoint_every=100, preview_size=96),
    )


PRESETS: dict[str, Callable[[], GenerateConfig]] = {"default": default, "paper": paper, "fast": fast, "toy": toy}
