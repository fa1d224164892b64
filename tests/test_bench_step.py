"""scripts/bench_step.py runs (--tiny, a couple of steps) and its numbers add up, so it cannot rot."""

from __future__ import annotations

import json

import pytest
from script_loader import load_script


@pytest.fixture(scope="module")
def bench_step():
    return load_script("bench_step")


def test_tiny_benchmark_times_every_part_of_real_steps(bench_step, tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["--tiny", "--particles", "1", "2", "--warmup", "1", "--steps", "2", "--gaussians", "500"]
    args += ["--json", str(out)]
    results = bench_step.main(args)
    saved = json.loads(out.read_text())
    assert saved["results"] == json.loads(json.dumps(results))
    assert set(saved["adapter_switch_ms"]) == {"diffusers", "peft_layers", "flag"}
    assert all(ms > 0 for ms in saved["adapter_switch_ms"].values())
    assert [r["particles"] for r in results] == [1, 2] and [r["batch"] for r in results] == [1, 2]
    for r in results:
        assert r["resolution"] == 64 and r["gaussians_per_particle"] == 500
        parts = r["parts_ms"]
        # Every part of a VSD step ran and took time; the parts and "other" make up the step.
        assert all(parts[name] > 0 for name in bench_step.PARTS), parts
        assert sum(parts[name] for name in (*bench_step.PARTS, "other")) == pytest.approx(
            max(parts["step"], sum(parts[name] for name in bench_step.PARTS)), rel=1e-6
        )
        assert set(r["floor_ms"]) == {"vae_encode_fwd_bwd", "unet_cfg", "phi_forward", "phi_fwd_bwd"}
        assert r["floor_total_ms"] == pytest.approx(sum(r["floor_ms"].values()))
        assert r["step_over_floor"] == pytest.approx(parts["step"] / r["floor_total_ms"])
        assert r["peak_gpu_memory_gib"] is None  # CPU
    table = capsys.readouterr().out
    assert "| **step** |" in table and "step / floor" in table and "5000 steps (paper preset)" in table


def test_sd21_base_architecture_is_the_published_one(bench_step):
    """The full-size config builds Stable Diffusion 2.1-base's UNet: 865.9 M parameters (on the meta device)."""
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**bench_step.SD21_BASE_UNET)
    assert sum(p.numel() for p in unet.parameters()) == 865_910_724
