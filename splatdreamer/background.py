"""Solid backgrounds behind renders: one colour per view."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from splatdreamer.errors import ConfigError

BackgroundMode = Literal["white", "black", "random", "white_black"]
BACKGROUND_MODES = ("white", "black", "random", "white_black")


def sample_background(
    mode: BackgroundMode, num: int, generator: torch.Generator | None = None
) -> Tensor:
    """[num, 3] background colours in [0, 1].

    "random" draws a uniform colour per view (ProlificDreamer's random solid background after step
    2000, nerf/utils.py); "white_black" picks white or black with p = 0.5 per view (DreamGaussian,
    threestudio-3dgs `invert_bg_prob 0.5`).
    """
    match mode:
        case "white":
            return torch.ones(num, 3)
        case "black":
            return torch.zeros(num, 3)
        case "random":
            return torch.rand(num, 3, generator=generator)
        case "white_black":
            return (torch.rand(num, 1, generator=generator) < 0.5).float().expand(num, 3).clone()
        case _:
            raise ConfigError(f"unknown background mode {mode!r}; choose one of {', '.join(BACKGROUND_MODES)}")
