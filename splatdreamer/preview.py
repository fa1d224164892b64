"""Pictures of a particle: fixed-view contact sheets and turntables, the things people look at."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from splatdreamer import cameras as cams
from splatdreamer.io.images import contact_sheet, save_gif, save_png
from splatdreamer.render import render


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
    save_png(contact_sheet(sheet, columns=4), sheet_path)
    turn = render_views(splats, cams.turntable(frames, size, size), background, backend)
    save_gif(turn, gif_path, fps=12)
    return sheet_path, gif_path
