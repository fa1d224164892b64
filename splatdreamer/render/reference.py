"""The reference rasterizer: 3D Gaussian splatting in plain PyTorch, differentiable, on any device.

It reproduces gsplat 1.5.3's pinhole "RGB+ED" rendering (`notes/gsplat.md` B8, read from
`ProjectionEWA3DGSFused.cu` and `RasterizeToPixels3DGSFwd.cu`):

1. Σ = R S Sᵀ Rᵀ from the normalised wxyz quaternion; world -> camera; cull outside [near, far].
2. EWA projection with the tan-FOV clamp of the Jacobian (0.3·W/(2fx) beyond the image edge).
3. Σ2d + eps2d·I (the 0.3 px low-pass); "antialiased" scales opacity by sqrt(det Σ2d / det(Σ2d + eps2d·I)).
4. At pixel centre (j + 0.5, i + 0.5): α = min(0.999, o·exp(-σ)), skipped if σ < 0 or α < 1/255.
5. Front to back by camera z (stable: ties keep Gaussian order); the Gaussian that would bring the
   transmittance to <= 1e-4 is not drawn and ends the pixel; colour = Σ w c + (1 - alpha)·background.

Two compositors draw the same image. `dense` evaluates every Gaussian at every pixel and lets autograd
differentiate it: short and obviously right, it is the baseline the tests compare against. The default
`tiles` path cuts each image into small square tiles and lists every Gaussian under each tile its
opacity-aware 3σ rectangle touches (outside that rectangle α < 1/255, so nothing visible is dropped).
The (Gaussian, tile) rows, grouped by tile and depth-sorted inside, are composited in cache-sized chunks
with no padding: a float64 running sum of log(1 - α), restarted at each tile, gives the transmittance;
the gradient of that step is written out by hand (`_RasterizeTiles`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from splatdreamer.render.sh import sh_to_rgb

ALPHA_THRESHOLD = 1.0 / 255.0  # gsplat Common.h
MAX_ALPHA = 0.999  # gsplat RasterizeToPixels3DGSFwd.cu
MIN_TRANSMITTANCE = 1e-4  # same kernel: a pixel is done once T would drop to this
MAX_EXTEND = 3.33  # gsplat ProjectionEWA3DGSFused.cu: the bounding rectangle is at most 3.33 sigma
FOV_MARGIN = 0.3  # gsplat persp_proj: the Jacobian's x/z is clamped 30 % of the half-FOV past the edge
# (Gaussian-tile row, pixel) entries composited per step. On a CPU, small steps keep the [rows, pixels]
# arrays in cache, which makes a many-camera batch cost the sum of its cameras, not several times more;
# a GPU wants few, large launches instead.
ENTRIES_PER_CHUNK = {"cpu": 1 << 18, "cuda": 1 << 24}
DEFAULT_TILE_SIZE = 4  # measured fastest for 64-128 px images (docs/benchmarks.md)


@dataclass
class Projection:
    """Every Gaussian seen by every camera (gsplat's non-packed projection outputs)."""

    means2d: Tensor  # [C, N, 2] pixel coordinates of the centres
    conics: Tensor  # [C, N, 3] (a, b, c): upper triangle of the inverse of the blurred 2D covariance
    depths: Tensor  # [C, N] camera-space z
    opacities: Tensor  # [C, N] opacity, times the antialiasing compensation when asked for
    radii: Tensor  # [C, N, 2] int32 half-extents in pixels of the opacity-aware 3σ rectangle; 0 = culled
    valid: Tensor  # [C, N] bool: between the clipping planes with a positive-definite 2D covariance


def quat_scale_to_covar(
    quats: Tensor,  # [N, 4] wxyz, any length
    scales: Tensor,  # [N, 3] standard deviations
) -> Tensor:
    """[N, 3, 3] world-space covariances R S Sᵀ Rᵀ."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(-1, 3, 3)  # fmt: skip
    M = R * scales[:, None, :]
    return M @ M.transpose(-1, -2)


def project(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] wxyz
    scales: Tensor,  # [N, 3] standard deviations
    opacities: Tensor,  # [N] in [0, 1]
    viewmats: Tensor,  # [C, 4, 4] world-to-camera
    Ks: Tensor,  # [C, 3, 3] pixel intrinsics
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    antialiased: bool = False,
) -> Projection:
    """EWA-project N Gaussians into C pinhole cameras, as gsplat's `fully_fused_projection`."""
    N, C = means.shape[0], viewmats.shape[0]
    assert means.shape == (N, 3) and quats.shape == (N, 4) and scales.shape == (N, 3), (means.shape, quats.shape)
    assert opacities.shape == (N,), opacities.shape
    assert viewmats.shape == (C, 4, 4) and Ks.shape == (C, 3, 3), (viewmats.shape, Ks.shape)

    rot, trans = viewmats[:, :3, :3], viewmats[:, :3, 3]
    means_c = torch.einsum("cij,nj->cni", rot, means) + trans[:, None, :]  # [C, N, 3]
    covars_c = rot[:, None] @ quat_scale_to_covar(quats, scales)[None] @ rot[:, None].transpose(-1, -2)
    x, y, z = means_c.unbind(-1)
    in_range = (z >= near_plane) & (z <= far_plane)
    # Culled Gaussians are never drawn, but 1/z of a point behind the camera would put inf/NaN into
    # the backward pass (0 * inf); give them a harmless depth instead.
    z = torch.where(in_range, z, torch.ones_like(z))

    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    margin_x, margin_y = FOV_MARGIN * 0.5 * width / fx, FOV_MARGIN * 0.5 * height / fy
    tx = z * torch.clamp(x / z, min=-(cx / fx + margin_x), max=(width - cx) / fx + margin_x)
    ty = z * torch.clamp(y / z, min=-(cy / fy + margin_y), max=(height - cy) / fy + margin_y)
    zeros = torch.zeros_like(z)
    J = torch.stack([fx / z, zeros, -fx * tx / z**2, zeros, fy / z, -fy * ty / z**2], dim=-1).reshape(C, N, 2, 3)
    cov2d = J @ covars_c @ J.transpose(-1, -2)  # [C, N, 2, 2]
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)

    sxx, sxy, syy = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 1]
    det_orig = sxx * syy - sxy * sxy
    sxx, syy = sxx + eps2d, syy + eps2d
    det = sxx * syy - sxy * sxy
    valid = in_range & (det > 0)
    det = torch.where(valid, det, torch.ones_like(det))  # same reason as for z above
    conics = torch.stack([syy / det, -sxy / det, sxx / det], dim=-1)
    opac = opacities.expand(C, N)
    if antialiased:
        opac = opac * torch.sqrt(torch.clamp(det_orig / det, min=0.0))

    with torch.no_grad():
        # Beyond `extend` sigmas o·exp(-σ) < 1/255, so the rectangle holds every pixel the Gaussian touches.
        extend = torch.sqrt(2.0 * torch.log(torch.clamp(opac * 255.0, min=1.0))).clamp(max=MAX_EXTEND)
        radius = torch.ceil(extend[..., None] * torch.sqrt(torch.stack([sxx, syy], dim=-1).clamp(min=0.0)))
        lo, hi = means2d - radius, means2d + radius
        visible = (
            valid & (opac >= ALPHA_THRESHOLD) & (radius > 0).any(-1)
            & (hi[..., 0] > 0) & (lo[..., 0] < width) & (hi[..., 1] > 0) & (lo[..., 1] < height)
        )  # fmt: skip
        radii = torch.where(visible[..., None], radius, torch.zeros_like(radius)).int()
    return Projection(means2d, conics, means_c[..., 2], opac, radii, valid)


def rasterization(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] wxyz, any length
    scales: Tensor,  # [N, 3] standard deviations (post-activation)
    opacities: Tensor,  # [N] in [0, 1] (post-activation)
    colors: Tensor,  # [N, K, 3] SH coefficients
    viewmats: Tensor,  # [C, 4, 4] world-to-camera
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    *,
    sh_degree: int,
    backgrounds: Tensor | None = None,  # [C, 3]
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    packed: bool = False,
    rasterize_mode: str = "classic",
    absgrad: bool = False,
    tile_size: int = DEFAULT_TILE_SIZE,
    dense: bool = False,
) -> tuple[Tensor, Tensor, dict]:
    """gsplat's `rasterization(..., render_mode="RGB+ED")` for one scene, in PyTorch.

    Returns `render_colors [C, H, W, 4]` (RGB over the background, then expected depth),
    `render_alphas [C, H, W, 1]` and gsplat's `meta` keys (B2 of notes/gsplat.md): `means2d`, `radii`,
    `depths`, `conics`, `opacities` ([C, N, ...], or [nnz, ...] when packed, with `batch_ids`,
    `camera_ids`, `gaussian_ids`), `width`, `height`, `tile_size`, `n_batches`, `n_cameras`.
    `means2d` is the tensor the image is computed from, so its `.grad` is the screen-space gradient
    (and `.absgrad`, with `absgrad=True`, the sum over pixels of its absolute per-pixel parts).
    `dense=True` selects the every-Gaussian-at-every-pixel baseline (not packed).
    """
    N, C = means.shape[0], viewmats.shape[0]
    assert colors.shape[0] == N and colors.shape[2] == 3 and (sh_degree + 1) ** 2 <= colors.shape[1], colors.shape
    assert backgrounds is None or backgrounds.shape == (C, 3), backgrounds.shape
    assert rasterize_mode in ("classic", "antialiased"), rasterize_mode
    assert not (dense and packed), "the dense baseline draws culled Gaussians too, which a packed list leaves out"
    proj = project(
        means, quats, scales, opacities, viewmats, Ks, width, height, eps2d, near_plane, far_plane,
        antialiased=rasterize_mode == "antialiased",
    )  # fmt: skip

    drawn = proj.valid if dense else (proj.radii > 0).all(-1)
    cam_ids, gs_ids = torch.nonzero(drawn, as_tuple=True)  # [M] each, ordered by camera then Gaussian
    means2d = proj.means2d[cam_ids, gs_ids]  # [M, 2]: in packed mode, the very tensor `meta` exposes
    depths = proj.depths[cam_ids, gs_ids]
    campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [C, 3]
    rgb = sh_to_rgb(colors[gs_ids], means[gs_ids] - campos[cam_ids], sh_degree)  # [M, 3]
    features = torch.cat([rgb, depths[:, None]], dim=-1)  # [M, 4]: depth rides along as a 4th channel
    conics, opac = proj.conics[cam_ids, gs_ids], proj.opacities[cam_ids, gs_ids]

    if packed:
        meta_means2d = means2d
        meta = dict(
            batch_ids=torch.zeros_like(cam_ids), camera_ids=cam_ids, gaussian_ids=gs_ids,
            radii=proj.radii[cam_ids, gs_ids], means2d=means2d, depths=depths, conics=conics, opacities=opac,
        )  # fmt: skip
        absgrad_rows = torch.arange(len(cam_ids), device=means.device)
    else:
        meta_means2d = proj.means2d
        meta = dict(
            batch_ids=None, camera_ids=None, gaussian_ids=None, radii=proj.radii, means2d=proj.means2d,
            depths=proj.depths, conics=proj.conics, opacities=proj.opacities,
        )  # fmt: skip
        absgrad_rows = cam_ids * N + gs_ids
    if absgrad and meta_means2d.requires_grad:
        # gsplat's backward fills `means2d.absgrad`; ours adds into it as the gradients arrive.
        meta_means2d.absgrad = torch.zeros_like(meta_means2d)
        absgrad_sink = _AbsGradSink(meta_means2d.absgrad.view(-1, 2), absgrad_rows)
    else:
        absgrad_sink = None

    if dense:
        accum, alphas = _composite_dense(
            means2d, conics, opac, features, depths, cam_ids, C, width, height, absgrad_sink
        )
    else:
        radii = proj.radii[cam_ids, gs_ids]
        accum, alphas = _composite_tiles(
            means2d, conics, opac, features, radii, depths, cam_ids, C, width, height, tile_size, absgrad_sink
        )
    rgb_out = accum[..., :3]
    if backgrounds is not None:
        rgb_out = rgb_out + (1.0 - alphas) * backgrounds[:, None, None, :]
    expected_depth = accum[..., 3:] / alphas.clamp(min=1e-10)
    meta.update(width=width, height=height, tile_size=tile_size, n_batches=1, n_cameras=C)
    return torch.cat([rgb_out, expected_depth], dim=-1), alphas, meta


@dataclass
class _AbsGradSink:
    """Where the per-pixel absolute gradients of the drawn centres add up (AbsGS, gsplat's `absgrad`)."""

    values: Tensor  # [K, 2] a flat view of `means2d.absgrad`
    rows: Tensor  # [M] the row of `values` of each drawn (camera, Gaussian) pair

    def add(self, items: Tensor, axis: int, per_pixel: Tensor) -> None:
        """items [R] drawn pairs; per_pixel [R, P] each pixel's share of the gradient of their centre's x or y."""
        self.values[:, axis].index_add_(0, self.rows[items], per_pixel.abs().sum(1))


def _footprint(
    centres: Tensor,  # [R, 2] Gaussian centres, relative to the origin of the pixel grid
    grid: Tensor,  # [P, 2] pixel centres of the grid
    conics: Tensor,  # [R, 3]
    opacities: Tensor,  # [R]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """dx, dy (centre - pixel), the unclamped o·exp(-σ), and α (zero where gsplat skips); all [R, P]."""
    dx = centres[:, 0:1] - grid[:, 0]
    dy = centres[:, 1:2] - grid[:, 1]
    half_a, b, half_c = 0.5 * conics[:, 0:1], conics[:, 1:2], 0.5 * conics[:, 2:3]
    sigma = dx * (half_a * dx + b * dy) + half_c * dy * dy  # 0.5 (a dx² + c dy²) + b dx dy, in fewer passes
    raw = opacities[:, None] * torch.exp(-sigma)
    alpha = torch.clamp(raw, max=MAX_ALPHA)
    return dx, dy, raw, alpha.masked_fill((sigma < 0) | (alpha < ALPHA_THRESHOLD), 0.0)


def _pixel_grid(width: int, height: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """[height * width, 2] (x, y) pixel centres, row-major."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype), torch.arange(width, device=device, dtype=dtype), indexing="ij"
    )
    return torch.stack([xs, ys], dim=-1).reshape(-1, 2) + 0.5


def _composite_dense(
    means2d: Tensor,  # [M, 2] drawn (camera, Gaussian) pairs
    conics: Tensor,  # [M, 3]
    opacities: Tensor,  # [M]
    features: Tensor,  # [M, F]
    depths: Tensor,  # [M]
    cam_ids: Tensor,  # [M]
    n_cameras: int,
    width: int,
    height: int,
    absgrad_sink: _AbsGradSink | None,
) -> tuple[Tensor, Tensor]:
    """Σ w·features [C, H, W, F] and alpha [C, H, W, 1]: every pair at every pixel, one camera at a time,
    differentiated by autograd (so it also checks the hand-written gradient of the tiled path)."""
    grid = _pixel_grid(width, height, means2d.device, means2d.dtype)
    accum, alphas = [], []
    for cam in range(n_cameras):
        rows = torch.nonzero(cam_ids == cam).squeeze(1)
        rows = rows[torch.argsort(depths[rows], stable=True)]
        dx, dy, _, alpha = _footprint(means2d[rows], grid, conics[rows], opacities[rows])  # [M_c, H*W]
        if absgrad_sink is not None:  # d(loss)/d(dx) holds each pixel's own share of the centre's gradient
            dx.register_hook(functools.partial(absgrad_sink.add, rows, 0))
            dy.register_hook(functools.partial(absgrad_sink.add, rows, 1))
        t_incl = torch.cumprod(1.0 - alpha, dim=0)
        t_excl = torch.cat([torch.ones_like(t_incl[:1]), t_incl[:-1]])
        weights = alpha * t_excl * (t_incl > MIN_TRANSMITTANCE)
        accum.append((weights.T @ features[rows]).reshape(height, width, -1))
        alphas.append(weights.sum(0).reshape(height, width, 1))
    return torch.stack(accum), torch.stack(alphas)


def _composite_tiles(
    means2d: Tensor,  # [M, 2] visible (camera, Gaussian) pairs
    conics: Tensor,  # [M, 3]
    opacities: Tensor,  # [M]
    features: Tensor,  # [M, F]
    radii: Tensor,  # [M, 2] int32, > 0
    depths: Tensor,  # [M]
    cam_ids: Tensor,  # [M]
    n_cameras: int,
    width: int,
    height: int,
    tile_size: int,
    absgrad_sink: _AbsGradSink | None,
) -> tuple[Tensor, Tensor]:
    """The same sums as `_composite_dense`, visiting each Gaussian only in the tiles its rectangle touches."""
    dev, dt = means2d.device, means2d.dtype
    ts = tile_size
    tiles_x, tiles_y = math.ceil(width / ts), math.ceil(height / ts)
    n_tiles = n_cameras * tiles_y * tiles_x
    with torch.no_grad():
        # Depth order inside each camera; both sorts are stable so equal depths keep Gaussian order.
        order = torch.argsort(depths, stable=True)
        order = order[torch.argsort(cam_ids[order], stable=True)]
        centre, radius = means2d.detach()[order], radii[order].to(dt)
        first = torch.floor((centre - radius) / ts).long()
        last = torch.floor((centre + radius) / ts).long()
        x0, x1 = first[:, 0].clamp(0, tiles_x - 1), last[:, 0].clamp(0, tiles_x - 1)
        y0, y1 = first[:, 1].clamp(0, tiles_y - 1), last[:, 1].clamp(0, tiles_y - 1)
        span_x = x1 - x0 + 1
        counts = span_x * (y1 - y0 + 1)
        # One row per (Gaussian, tile) pair: the k-th tile of a rectangle is at (k % span_x, k // span_x).
        pair_item = torch.repeat_interleave(order, counts)
        rect_start = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        k = torch.arange(len(pair_item), device=dev) - rect_start
        span = torch.repeat_interleave(span_x, counts)
        tx = torch.repeat_interleave(x0, counts) + k % span
        ty = torch.repeat_interleave(y0, counts) + k // span
        tile = (cam_ids[pair_item] * tiles_y + ty) * tiles_x + tx
        by_tile = torch.argsort(tile, stable=True)  # group by tile, depth order kept inside each group
        rows, tile = pair_item[by_tile], tile[by_tile]
        corner = torch.stack([tile % tiles_x, (tile // tiles_x) % tiles_y], dim=-1).to(dt) * ts  # [R, 2]
        tile_first = torch.cumsum(torch.bincount(tile, minlength=n_tiles), 0)
        tile_first = torch.cat([tile_first.new_zeros(1), tile_first])  # [n_tiles + 1] row ranges of the tiles
        grid = _pixel_grid(ts, ts, dev, dt)  # [P, 2], P = ts * ts

    features_and_one = torch.cat([features, torch.ones_like(features[:, :1])], dim=-1)  # the 1 sums to alpha
    rows_per_chunk = max(1, ENTRIES_PER_CHUNK.get(dev.type, ENTRIES_PER_CHUNK["cpu"]) // (ts * ts))
    tile_sums = []
    for t0, t1 in _tile_chunks(tile_first, rows_per_chunk):
        r0, r1 = int(tile_first[t0]), int(tile_first[t1])
        chunk = rows[r0:r1]
        local_tile = tile[r0:r1] - t0
        layout = _TileLayout(
            grid=grid,
            tile=local_tile,
            first=tile_first[t0:t1][local_tile] - r0,
            last=tile_first[t0 + 1 : t1 + 1][local_tile] - r0 - 1,
            n_tiles=t1 - t0,
            items=chunk,
            absgrad_sink=absgrad_sink,
        )
        centres = means2d[chunk] - corner[r0:r1]
        tile_sums.append(
            _RasterizeTiles.apply(centres, conics[chunk], opacities[chunk], features_and_one[chunk], layout)
        )
    image = torch.cat(tile_sums).reshape(n_cameras, tiles_y, tiles_x, ts, ts, -1).permute(0, 1, 3, 2, 4, 5)
    image = image.reshape(n_cameras, tiles_y * ts, tiles_x * ts, -1)[:, :height, :width]
    return image[..., :-1], image[..., -1:]


def _tile_chunks(tile_first: Tensor, rows_per_chunk: int) -> list[tuple[int, int]]:
    """Split tiles 0..n into consecutive ranges of about `rows_per_chunk` rows each (whole tiles only).

    tile_first: Tensor,  # [n + 1] first row of each tile, then the total
    """
    group = torch.div(tile_first[:-1], rows_per_chunk, rounding_mode="floor")
    starts = (torch.nonzero(group[1:] != group[:-1]).squeeze(1) + 1).tolist()
    bounds = [0, *starts, len(tile_first) - 1]
    return list(zip(bounds[:-1], bounds[1:]))


@dataclass
class _TileLayout:
    """Where the rows of one chunk go: rows are sorted by tile, front to back inside each tile."""

    grid: Tensor  # [P, 2] pixel centres of a tile, relative to its corner
    tile: Tensor  # [R] tile of each row, 0..n_tiles-1
    first: Tensor  # [R] first row of the row's tile
    last: Tensor  # [R] last row of the row's tile
    n_tiles: int
    items: Tensor  # [R] the drawn pair of each row, to route absgrad
    absgrad_sink: _AbsGradSink | None


class _RasterizeTiles(torch.autograd.Function):
    """α of each row at each pixel of its tile, then front-to-back compositing, with a hand-written backward.

    Autograd through the running products would store a dozen [R, P] intermediates and replay them; the
    closed-form gradient needs only α, the transmittances and the weights. Like gsplat's backward kernel,
    it also hands each pixel's share of the centre's gradient to `absgrad`. `_composite_dense` is the
    autograd version the tests check it against.
    """

    @staticmethod
    def forward(
        ctx,
        centres: Tensor,  # [R, 2] relative to each row's tile corner
        conics: Tensor,  # [R, 3]
        opacities: Tensor,  # [R]
        features: Tensor,  # [R, F]
        layout: _TileLayout,
    ) -> Tensor:
        """[n_tiles, P, F] per-pixel sums of w·features, w = α·T, over the rows of each tile."""
        _, _, raw, alpha = _footprint(centres, layout.grid, conics, opacities)
        # T before each row: exp of the running sum of log(1 - α) since the tile's first row (float64:
        # the running sum crosses every earlier tile of the chunk before the tile's start is subtracted).
        log_keep = torch.log1p(-alpha.double())
        before = torch.cumsum(log_keep, dim=0) - log_keep
        t_excl = torch.exp(before - before[layout.first]).to(alpha.dtype)
        stopped = t_excl * (1.0 - alpha) <= MIN_TRANSMITTANCE  # gsplat's exclusive stop
        weights = (alpha * t_excl).masked_fill_(stopped, 0.0)
        # Where α was skipped or clamped at 0.999 it does not move with the Gaussian's parameters.
        moving = (alpha > 0) & (raw <= MAX_ALPHA)
        ctx.save_for_backward(centres, conics, opacities, features, alpha, t_excl, weights, stopped, moving)
        ctx.layout = layout
        sums = alpha.new_zeros(layout.n_tiles, alpha.shape[1], features.shape[1])
        return sums.index_add_(0, layout.tile, weights[..., None] * features[:, None, :])

    @staticmethod
    def backward(ctx, grad_sums: Tensor):  # [n_tiles, P, F]
        centres, conics, opacities, features, alpha, t_excl, weights, stopped, moving = ctx.saved_tensors
        layout = ctx.layout
        grad_rows = grad_sums[layout.tile]  # [R, P, F]
        grad_w = (grad_rows * features[:, None, :]).sum(-1)  # [R, P]
        grad_features = (grad_rows * weights[..., None]).sum(1)
        # w_j = α_j T_j with T_j = Π_{i<j} (1 - α_i), so dL/dα_r = T_r g_r - Σ_{j>r} w_j g_j / (1 - α_r),
        # the sum running over the later rows of the same tile (all zero past the stop).
        behind = torch.cumsum((weights * grad_w).double(), dim=0)
        behind = (behind[layout.last] - behind).to(alpha.dtype)
        grad_alpha = t_excl * grad_w.masked_fill_(stopped, 0.0) - behind / (1.0 - alpha)
        # Where α moves, α = o·exp(-σ): dα/do = α/o and dα/dσ = -α.
        grad_o_exp = (grad_alpha * alpha).masked_fill_(~moving, 0.0)  # = -dL/dσ
        dx = centres[:, 0:1] - layout.grid[:, 0]
        dy = centres[:, 1:2] - layout.grid[:, 1]
        a, b, c = conics[:, 0:1], conics[:, 1:2], conics[:, 2:3]
        grad_dx = -grad_o_exp * (a * dx + b * dy)  # dσ/d(dx) for σ = 0.5 (a dx² + c dy²) + b dx dy
        grad_dy = -grad_o_exp * (b * dx + c * dy)
        if layout.absgrad_sink is not None:
            layout.absgrad_sink.add(layout.items, 0, grad_dx)
            layout.absgrad_sink.add(layout.items, 1, grad_dy)
        grad_centres = torch.stack([grad_dx.sum(1), grad_dy.sum(1)], dim=-1)
        grad_conics = -torch.stack(
            [0.5 * (grad_o_exp * dx * dx).sum(1), (grad_o_exp * dx * dy).sum(1), 0.5 * (grad_o_exp * dy * dy).sum(1)],
            dim=-1,
        )
        grad_opacities = grad_o_exp.sum(1) / opacities
        return grad_centres, grad_conics, grad_opacities, grad_features, None
