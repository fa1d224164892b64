"""scripts/bench_prior_capacity.py: a toy-prior training step timed at several UNet sizes (docs/benchmarks.md,
"The sixth toy prior")."""

import pytest
from script_loader import load_script

from splatdreamer.toy.model import ToyModelConfig, build


def test_each_size_is_timed_with_its_own_parameters_and_the_first_is_the_unit(capsys):
    script = load_script("bench_prior_capacity")
    script.main(["--widths", "8,16", "16,32", "--layers", "1", "2", "--batch", "2", "--steps", "1"])
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()[2:]]
    assert [r[0].strip() for r in rows] == ["8,16", "16,32"]
    small = sum(p.numel() for p in build(ToyModelConfig(block_out_channels=(8, 16))).unet.parameters())
    large = sum(p.numel() for p in build(ToyModelConfig(block_out_channels=(16, 32), layers_per_block=2)).unet.parameters())
    assert [r[2].strip() for r in rows] == [f"{small / 1e6:.2f} M", f"{large / 1e6:.2f} M"]
    assert rows[0][4].strip() == "1.00" and float(rows[1][3]) > 0


def test_sizes_and_layer_counts_must_pair_up():
    script = load_script("bench_prior_capacity")
    with pytest.raises(SystemExit):
        script.main(["--widths", "8,16", "16,32", "--layers", "1"])
