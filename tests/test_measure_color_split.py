"""scripts/measure_color_split.py: what each particle of a many-coloured toy object draws (docs/benchmarks.md,
"The preset: falling t at CFG 1")."""

import pytest
import torch
from script_loader import load_script

from splatdreamer.io.ply import save_ply
from splatdreamer.splats import detached_copy, rgb_to_sh0
from splatdreamer.toy.objects import PALETTE, true_colors, variants


def _painted(splats, color: str):
    out = detached_copy(splats)
    out["sh0"] = torch.nn.Parameter(rgb_to_sh0(torch.tensor(PALETTE[color])).expand_as(out["sh0"]).clone())
    return out


def test_the_truth_splits_its_colours_and_a_one_colour_cube_does_not(tmp_path, capsys):
    script = load_script("measure_color_split")
    colors = true_colors("a two-tone cube")
    assert [script.color_name(c) for c in colors] == ["purple", "yellow"]
    cube = variants("a two-tone cube")[0].splats
    truth = script.color_shares(cube, colors)
    assert truth.sum().item() == pytest.approx(1.0)
    assert 0.2 < truth[1].item() < 0.45  # the yellow sides: about a third of what the scoring views see
    assert script.color_shares(_painted(cube, "purple"), colors).tolist() == [1.0, 0.0]

    run = tmp_path / "vsd-1" / "s0"
    run.mkdir(parents=True)
    save_ply(_painted(cube, "yellow"), run / "particle_0.ply")
    save_ply(cube, run / "particle_1.ply")
    script.main([str(tmp_path / "vsd-1")])
    rows = capsys.readouterr().out.splitlines()
    assert rows[2].startswith("| truth | 1 |") and rows[2].endswith("| 0 of 1 | 0.68/0.32 |"), rows[2]
    assert rows[3].startswith(f"| {tmp_path / 'vsd-1'} | 2 | 0.00/1.00, 0.68/0.32 | 1 of 2 |"), rows[3]


def test_a_folder_without_particles_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        load_script("measure_color_split").main([str(tmp_path)])
    assert f"{tmp_path}: no particle_*.ply files in it or below it" in capsys.readouterr().err
