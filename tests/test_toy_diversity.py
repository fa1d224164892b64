"""The README's diverse job: "a ball" on the toy preset (VSD at CFG 1, timesteps that fall) over 1000 steps, run
exactly as the README prints it, gives particles of several true colours (minutes on a CPU)."""

import re
import shlex
from pathlib import Path

import pytest

from splatdreamer.cli import main
from splatdreamer.io.ply import load_ply
from splatdreamer.toy.evaluate import score_particle

ROOT = Path(__file__).resolve().parents[1]
COMMAND = re.compile(r'^splatdreamer generate --preset toy --prompt "a ball" .*--steps 1000.*$', re.M)


def readme_command() -> list[str]:
    found = COMMAND.findall((ROOT / "README.md").read_text())
    assert len(found) == 1, "the README prints one 'a ball' command of 1000 steps"
    return shlex.split(found[0])[1:]


def test_the_readme_command_asks_for_vsd_at_cfg_1_with_falling_t(monkeypatch):
    """What the slow test below runs, checked in seconds: the settings the measured result depends on."""
    import importlib

    args = readme_command()
    assert args[:5] == ["generate", "--preset", "toy", "--prompt", "a ball"]
    seen = []
    monkeypatch.setattr(importlib.import_module("splatdreamer.generate"), "generate",
                        lambda config, **options: seen.append(config))  # fmt: skip
    assert main(args) == 0
    (config,) = seen
    got = (config.vsd.mode, config.vsd.guidance(), config.vsd.t_schedule, config.steps, config.particles)
    assert got == ("vsd", 1.0, "decreasing", 1000, 4)


@pytest.mark.slow
def test_readme_ball_command_gives_particles_of_several_true_colours(tmp_path):
    # Measured with the sixth toy prior (toy eval --methods vsd-1 --base.vsd.t-schedule decreasing --base.steps
    # 1000, seeds 0-2; the toy preset with --steps 1000 since falling t at CFG 1 became the preset): all four
    # colours in every seed, each particle pure (colour error 0.009-0.010); SDS at CFG 7.5 from the same seeds:
    # 1.33 colours. The bound leaves one colour of margin: four independent draws from the balanced prior would
    # cover 2.73 on average, and SDS-7.5 covers 1 here.
    out = tmp_path / "ball"
    assert main([*readme_command(), "--output.out-dir", str(out)]) == 0
    scores = [score_particle(load_ply(p, requires_grad=False), "a ball", size=64) for p in sorted(out.glob("*.ply"))]
    assert len(scores) == 4
    assert all(s.pure for s in scores), scores
    assert len({s.variant for s in scores}) >= 3, scores
