"""scripts/measure_phi_error.py measures what it says on a real run of the toy preset, so it cannot rot."""

import tempfile
from pathlib import Path

import torch

from splatdreamer import presets
from splatdreamer.generate import Generation
from script_loader import load_script


def test_phi_error_against_the_exact_phi_on_the_toy_preset():
    script = load_script("measure_phi_error")
    config = presets.toy()
    config.prompt, config.steps = "a red ball", 4
    with tempfile.TemporaryDirectory() as run_dir:
        run = Generation(config, Path(run_dir))
        run.train_step()
        errors = script.phi_errors(run, timesteps=(50, 950), draws=2)
    # At t = 50 the particles' noised renders are far apart, so the exact phi is each sample's own noise.
    assert errors[50]["noise"] < 1e-3 * errors[50]["signal"], errors
    # A LoRA phi one step old is not the exact score, at low noise least of all, where it must know each pixel.
    assert errors[50]["phi"] > errors[950]["phi"] > 0, errors
    assert all(torch.isfinite(torch.tensor(list(e.values()))).all() for e in errors.values())
