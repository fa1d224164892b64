"""scripts/measure_face_pull.py: where the prior pulls each face of a one-colour cube (docs/benchmarks.md,
"The two-tone cube's faces: the trained prior never asks for them below t = 900")."""

import torch
from script_loader import load_script

from splatdreamer.cameras import DEFAULT_RANGES, sample
from splatdreamer.toy.data import render_views

ABAR = torch.tensor(0.3)


def test_face_pull_reads_where_the_denoiser_points_each_face():
    script = load_script("measure_face_pull")
    cameras = sample(6, DEFAULT_RANGES, 32, 32, torch.Generator().manual_seed(1))
    truth = render_views(script.cube(script.PROMPT, "truth", "yellow", "purple"), cameras) * 2 - 1
    yellow_px, purple_px = script.face_masks(truth / 2 + 0.5)
    share = yellow_px.sum() / (yellow_px.sum() + purple_px.sum())
    assert 0.15 < share.item() < 0.6, share  # the +-X faces: a part of what generation's cameras see
    assert not (yellow_px & purple_px).any()
    purple = render_views(script.cube(script.PROMPT, "purple", "purple", "purple"), cameras) * 2 - 1

    def toward(target):  # a denoiser whose x0_hat is `target` whatever it is given
        return lambda x_t, t, cfg: (x_t - ABAR.sqrt() * target) / (1 - ABAR).sqrt()

    right_y, right_p, mean_y = script.face_pull(toward(truth), purple, (yellow_px, purple_px), 500, 1.0, ABAR)
    assert right_y > 0.99 and right_p > 0.99
    assert torch.allclose(torch.tensor(mean_y), torch.tensor([0.95, 0.80, 0.10]), atol=0.05), mean_y
    right_y, right_p, _ = script.face_pull(toward(purple), purple, (yellow_px, purple_px), 500, 1.0, ABAR)
    assert right_y < 0.01 and right_p > 0.99  # a denoiser that keeps the colour it is given repaints nothing


def test_the_shipped_prior_keeps_the_truth_and_a_purple_cube_purple_at_t_500(capsys):
    load_script("measure_face_pull").main(["--t", "500", "--cfg", "1", "--draws", "4"])
    rows = {r.split(" | ")[0].lstrip("| "): r.split(" | ") for r in capsys.readouterr().out.splitlines()[3:]}
    assert set(rows) == {"all purple", "all yellow", "two-tone (truth)"}
    assert float(rows["two-tone (truth)"][3]) > 0.8 and float(rows["two-tone (truth)"][4]) > 0.8
    assert float(rows["all purple"][3]) < 0.2 and float(rows["all yellow"][4]) < 0.2
