"""Pictures on disk: uint8 conversion, contact sheets, PNG and looping GIF, all written atomically.

Images arrive as float tensors [B, 3, H, W] in [0, 1] (the project's convention) and leave as
uint8 arrays [B, H, W, 3]; `to_uint8` is the one place that converts.

No MP4: imageio needs the `imageio-ffmpeg` or `av` package for video, which download or bundle
an ffmpeg binary; turntables are GIFs, which Pillow writes on its own.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from splatdreamer.errors import ConfigError
from splatdreamer.io.atomic import atomic_write

GUTTER_VALUE = 128  # mid grey: visible between renders on white and on black backgrounds alike
_MAX_GIF_FPS = 50  # GIF delays are whole centiseconds, and browsers slow delays under 2 cs to 10 cs


def to_uint8(images: Tensor | np.ndarray) -> np.ndarray:
    """[B, 3, H, W] floats in [0, 1] -> [B, H, W, 3] uint8, clamped and rounded; NaN becomes 0."""
    x = torch.as_tensor(images).detach().to("cpu", torch.float32)
    assert x.ndim == 4 and x.shape[1] == 3, f"expected [B, 3, H, W] images, got {tuple(x.shape)}"
    x = torch.nan_to_num(x, nan=0.0).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def contact_sheet(images: Tensor | np.ndarray, columns: int | None = None, gutter: int = 2) -> np.ndarray:
    """Lay images [B, 3, H, W] (floats in [0, 1]) out in a grid -> uint8 [R*H + (R-1)*g, C*W + (C-1)*g, 3].

    Row-major: image i sits in row i // C, column i % C. C = `columns` (at most B), by default
    ceil(sqrt(B)); R = ceil(B / C). Cells are separated by `gutter` pixels of grey
    (GUTTER_VALUE), which also fills the unused cells of the last row.
    """
    tiles = to_uint8(images)
    b, h, w, _ = tiles.shape
    assert b > 0, "a contact sheet needs at least one image"
    if columns is not None and columns < 1:
        raise ConfigError(f"a contact sheet needs at least one column, got columns={columns}")
    cols = min(columns or math.ceil(math.sqrt(b)), b)
    rows = math.ceil(b / cols)
    sheet = np.full((rows * h + (rows - 1) * gutter, cols * w + (cols - 1) * gutter, 3), GUTTER_VALUE, np.uint8)
    for i, tile in enumerate(tiles):
        top, left = (i // cols) * (h + gutter), (i % cols) * (w + gutter)
        sheet[top : top + h, left : left + w] = tile
    return sheet


def _as_uint8(images: Tensor | np.ndarray) -> np.ndarray:
    """uint8 [B, H, W, 3] arrays pass as they are; float [B, 3, H, W] images go through `to_uint8`."""
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        assert images.ndim == 4 and images.shape[3] == 3, f"expected uint8 [B, H, W, 3], got {images.shape}"
        return images
    return to_uint8(images)


def save_png(image: Tensor | np.ndarray, path: str | os.PathLike) -> None:
    """Write one image as PNG, atomically: a uint8 [H, W, 3] array (e.g. a contact sheet) or a
    float [3, H, W] image in [0, 1]."""
    rgb = Image.fromarray(_as_uint8(image[None])[0])
    with atomic_write(path, "wb") as f:
        rgb.save(f, format="PNG")  # explicit: the temporary file's name has no .png suffix


def save_gif(frames: Tensor | np.ndarray, path: str | os.PathLike, fps: float) -> None:
    """Write an animated GIF that loops forever, atomically.

    `frames` is float [T, 3, H, W] in [0, 1] or uint8 [T, H, W, 3]. Each frame gets its own
    256-colour palette. GIF delays are whole centiseconds, so the rate is 100 / round(100 / fps)
    (12 fps plays at 12.5), and `fps` must lie in (0, 50]. Pillow merges consecutive identical
    frames into one longer frame, so a static turntable stores fewer frames at the same duration.
    """
    if not 0 < fps <= _MAX_GIF_FPS:
        raise ConfigError(f"a GIF plays at most {_MAX_GIF_FPS} fps (browsers slow faster ones down), got {fps}")
    arrays = _as_uint8(frames)
    assert len(arrays) > 0, "a GIF needs at least one frame"
    pictures = [Image.fromarray(a) for a in arrays]
    with atomic_write(path, "wb") as f:
        pictures[0].save(
            f,
            format="GIF",
            save_all=True,
            append_images=pictures[1:],
            duration=10 * round(100 / fps),  # milliseconds, a whole number of centiseconds
            loop=0,  # 0 = forever
        )
