"""Pictures of a particle: fixed-view contact sheets and turntables, the things people look at."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from splatdreamer import cameras as cams
from splatdreamer.io.images import contact_sheet, save_gif, save_png
from splatdreamer.render import render

SHEET_COLUMNS = 4  # the 12 evaluation views, 4 per row
SHEET_GUTTER = 2  # contact_sheet's default


@torch.no_grad()
def render_views(
    splats: torch.nn.ParameterDict,
    views: cams.Cameras,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    backend: str = "auto",
    chunk: int = 8,
) -> Tensor:
    """[C, 3, H, W] renders of `splats` from `views`, clamped to [0, 1], in chunks of cameras."""
    views = views.to(splats["means"].device)
    bg = torch.tensor(background, device=views.device)
    images = [
        render(splats, views[i : i + chunk], bg.expand(len(views[i : i + chunk]), 3), backend=backend).rgb
        for i in range(0, len(views), chunk)
    ]
    return torch.cat(images).clamp(0.0, 1.0).cpu()


def write_previews(
    splats: torch.nn.ParameterDict,
    stem: Path,
    size: int = 128,
    frames: int = 24,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    backend: str = "auto",
) -> tuple[Path, Path]:
    """Write `<stem>.png` (the 12 evaluation views as a sheet) and `<stem>.gif` (a turntable).

    The suffixes are appended, so stems with dots ("scene.v1", "scene.v2") keep their own files.
    Returns the two paths.
    """
    sheet_path, gif_path = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".gif")
    sheet = render_views(splats, cams.evaluation_views(size, size), background, backend)
    save_png(contact_sheet(sheet, columns=SHEET_COLUMNS), sheet_path)
    turn = render_views(splats, cams.turntable(frames, size, size), background, backend)
    save_gif(turn, gif_path, fps=12)
    return sheet_path, gif_path


def sheet_is_background(sheet_path: Path, size: int, background: tuple[float, float, float]) -> bool:
    """Whether every view of a sheet `write_previews` wrote at `size` px is `background` alone (to 2/255)."""
    pixels = np.asarray(Image.open(sheet_path).convert("RGB"), dtype=np.float32) / 255.0
    target = np.asarray(background, dtype=np.float32)
    step = size + SHEET_GUTTER
    for top in range(0, pixels.shape[0], step):
        for left in range(0, pixels.shape[1], step):
            if np.abs(pixels[top : top + size, left : left + size] - target).max() > 2.0 / 255.0:
                return False
    return True
