import math
import sys

import pytest
import torch

from splatdreamer import cameras as cams
from splatdreamer import splats as S
from splatdreamer.errors import BackendUnavailableError, ConfigError
from splatdreamer.render import RenderOutput, reference, render, resolve_backend
from splatdreamer.render.sh import C0, C1, sh_bases

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (gsplat's kernels)")


@pytest.fixture(autouse=True)
def one_thread():
    """These scenes are small: on a busy 2-core box, a second intra-op thread waiting for a core made them
    20x slower, one thread keeps the file well under 30 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pinhole(width: int, height: int, focal: float, dtype=torch.float32) -> cams.Cameras:
    """One camera at the origin looking down +Z (identity world-to-camera), principal point centred."""
    K = torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]], dtype=dtype)
    zero = torch.zeros(1, dtype=dtype)
    return cams.Cameras(torch.eye(4, dtype=dtype)[None], K[None], width, height, zero, zero, zero, zero)


def particle(means, scales, opacities, rgb, quats=None, shN=None) -> torch.nn.ParameterDict:
    """A particle from post-activation values (scales as std devs, opacities in (0, 1), rgb colours)."""
    means = torch.as_tensor(means, dtype=torch.float32)
    n = means.shape[0]
    scales = torch.as_tensor(scales, dtype=torch.float32).expand(n, 3)
    quats = torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4) if quats is None else torch.as_tensor(quats).float()
    opacities = torch.as_tensor(opacities, dtype=torch.float32).expand(n)
    sh0 = S.rgb_to_sh0(torch.as_tensor(rgb, dtype=torch.float32).expand(n, 3))[:, None]
    shN = torch.zeros(n, 0, 3) if shN is None else shN
    return S.from_tensors(means, scales.log(), quats, torch.logit(opacities), sh0, shN)


def random_scene(n: int, sh_degree: int, seed: int) -> dict[str, torch.Tensor]:
    """Pre-activation parameters of a busy random scene around the origin, some Gaussians off-screen."""
    g = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2
    return dict(
        means=(torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([1.6, 1.6, 1.6]),
        scales=torch.log(0.02 + 0.08 * torch.rand(n, 3, generator=g)),
        quats=torch.randn(n, 4, generator=g),
        opacities=2.0 * torch.randn(n, generator=g),
        sh0=torch.randn(n, 1, 3, generator=g),
        shN=0.3 * torch.randn(n, k - 1, 3, generator=g),
    )


def as_params(tensors: dict[str, torch.Tensor]) -> torch.nn.ParameterDict:
    return torch.nn.ParameterDict({k: torch.nn.Parameter(v.clone()) for k, v in tensors.items()})


def orbit_views(azimuths, width=42, height=30, elevation=20.0, radius=1.6, dtype=torch.float32) -> cams.Cameras:
    c = len(azimuths)
    full = lambda v: torch.full((c,), float(v), dtype=dtype)  # noqa: E731
    return cams.orbit(full(elevation), torch.tensor(azimuths, dtype=dtype), full(radius), full(50.0), width, height)


# ---------------------------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("mode", ["classic", "antialiased"])
def test_single_gaussian_matches_its_closed_form(mode):
    W, H, f, z, o = 21, 15, 100.0, 2.0, 0.8
    s = torch.tensor([0.05, 0.02, 0.03], dtype=torch.float64)
    theta = 0.6  # a rotation about the optical axis: q = (cos θ/2, 0, 0, sin θ/2)
    rgb, bg = torch.tensor([0.9, 0.2, 0.4]), torch.tensor([0.1, 0.3, 1.0])
    p = particle([[0.0, 0.0, z]], s.float(), o, rgb, quats=[[math.cos(theta / 2), 0, 0, math.sin(theta / 2)]])
    out = render(p, pinhole(W, H, f), bg, backend="reference", rasterize_mode=mode)

    # Σ2d = (f/z)² Σ3d[:2, :2] + 0.3 I for a Gaussian on the optical axis (J = f/z [I | 0] there).
    rot = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], dtype=torch.float64)
    cov_raw = (f / z) ** 2 * rot @ torch.diag(s[:2] ** 2) @ rot.T
    cov = cov_raw + 0.3 * torch.eye(2, dtype=torch.float64)
    opacity = o * math.sqrt(torch.det(cov_raw) / torch.det(cov)) if mode == "antialiased" else o
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    d = torch.stack([W / 2 - xs, H / 2 - ys], dim=-1).double()
    sigma = 0.5 * torch.einsum("hwi,ij,hwj->hw", d, torch.linalg.inv(cov), d)
    raw = opacity * torch.exp(-sigma)
    alpha = torch.where(raw >= 1 / 255, raw, 0.0).float()
    assert ((raw > 0.0005) & (raw < 1 / 255)).any(), "the image must contain faint pixels the 1/255 cut removes"

    torch.testing.assert_close(out.alpha[0, 0], alpha, atol=2e-6, rtol=0)
    expected = alpha * rgb[:, None, None] + (1 - alpha) * bg[:, None, None]
    torch.testing.assert_close(out.rgb[0], expected, atol=2e-6, rtol=0)
    torch.testing.assert_close(out.depth[0, 0], torch.where(alpha > 0, z, 0.0), atol=1e-5, rtol=0)
    extend = min(3.33, math.sqrt(2 * math.log(255 * opacity)))
    expected_radii = [math.ceil(extend * math.sqrt(cov[0, 0])), math.ceil(extend * math.sqrt(cov[1, 1]))]
    assert out.info["radii"][0, 0].tolist() == expected_radii


def test_points_land_on_the_expected_pixels():
    size, fovy = 64, 45.0
    f = cams.fov_to_focal(fovy, size)
    point = torch.tensor([[0.3, -0.2, 0.1]])  # right of, above (world -Y is up) and behind the origin
    p = particle(point, 0.004, 0.9, [1.0, 1.0, 1.0])
    one = lambda v: torch.tensor([float(v)])  # noqa: E731
    # Front camera (azimuth 0) sits at (0, 0, -2): camera axes equal world axes, depth 2.1.
    # Side camera (azimuth 90) sits at (2, 0, 0) looking along -X: world +Z points right, depth 1.7.
    for azimuth, (x, y, depth) in [(0.0, (0.3, -0.2, 2.1)), (90.0, (0.1, -0.2, 1.7))]:
        out = render(p, cams.orbit(one(0), one(azimuth), one(2.0), one(fovy), size, size), backend="reference")
        u, v = f * x / depth + size / 2, f * y / depth + size / 2
        torch.testing.assert_close(out.info["means2d"][0, 0], torch.tensor([u, v]), atol=1e-4, rtol=0)
        brightest = divmod(int(out.alpha[0, 0].argmax()), size)
        assert brightest == (int(v), int(u))
        torch.testing.assert_close(out.info["depths"][0, 0], torch.tensor(depth), atol=1e-5, rtol=0)
    # Seen from above (elevation 60), a point lifted above the origin appears above the image centre.
    lifted = particle([[0.0, -0.3, 0.0]], 0.004, 0.9, [1.0, 1.0, 1.0])
    out = render(lifted, cams.orbit(one(60), one(0), one(2.0), one(fovy), size, size), backend="reference")
    assert out.info["means2d"][0, 0, 1] < size / 2 - 5 and abs(out.info["means2d"][0, 0, 0] - size / 2) < 1e-4


def test_jacobian_clamps_at_the_tan_fov_margin():
    # A wide Gaussian far right of the view: gsplat evaluates the Jacobian as if its centre sat at x/z =
    # (W - cx)/f + 0.3·W/(2f), which keeps the footprint of off-screen Gaussians from exploding.
    W, H, f, z, s = 32, 24, 20.0, 2.0, 0.5
    p = particle([[3.5, 0.0, z], [0.5, 0.0, z]], s, 0.9, [1.0, 1.0, 1.0])  # the second is inside the view
    out = render(p, pinhole(W, H, f), backend="reference")
    for i, x in enumerate([3.5, 0.5]):
        tan_x = min(x / z, (W - W / 2) / f + 0.3 * W / (2 * f))
        sxx = s**2 * ((f / z) ** 2 + (f * tan_x / z) ** 2) + 0.3  # J Jᵀ s² with J02 = -f·tan_x/z
        syy = s**2 * (f / z) ** 2 + 0.3
        torch.testing.assert_close(out.info["conics"][0, i], torch.tensor([1 / sxx, 0.0, 1 / syy]))
    assert (out.info["radii"][0, 0] > 0).all() and out.alpha[0, 0, :, -1].max() > 0.01  # its tail is on screen


@pytest.mark.parametrize("packed", [False, True])
def test_nothing_in_view_renders_the_background(packed):
    p = particle([[0.0, 0.0, -2.0], [30.0, 0.0, 2.0]], 0.1, 0.5, [1.0, 0.0, 0.0])  # behind, and far right
    bg = torch.tensor([0.2, 0.4, 0.6])
    out = render(p, pinhole(8, 6, 10.0), bg, backend="reference", packed=packed)
    torch.testing.assert_close(out.rgb, bg[None, :, None, None].expand(1, 3, 6, 8))
    assert (out.alpha == 0).all() and (out.depth == 0).all()
    out.rgb.sum().backward()
    assert all((v.grad == 0).all() for v in p.values())


def test_front_to_back_order_and_background():
    red, blue, bg = [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], torch.tensor([0.0, 1.0, 0.0])
    W = H = 9  # odd: the centre pixel's centre is exactly on the optical axis (alpha = opacity there)
    cam = pinhole(W, H, 20.0)

    def centre(z_red, z_blue):
        # Scales proportional to depth: both project to the same footprint.
        scales = torch.tensor([[0.1 * z_red], [0.1 * z_blue]])
        p = particle([[0, 0, z_red], [0, 0, z_blue]], scales, 0.7, torch.tensor([red, blue]))
        out = render(p, cam, bg, backend="reference")
        return out.rgb[0, :, 4, 4], out.alpha[0, 0, 4, 4], out.depth[0, 0, 4, 4]

    rgb, alpha, depth = centre(2.0, 3.0)
    torch.testing.assert_close(rgb, torch.tensor([0.7, 0.09, 0.3 * 0.7]))  # 0.7 red + 0.3·0.7 blue + 0.09 bg
    torch.testing.assert_close(alpha, torch.tensor(0.91))
    torch.testing.assert_close(depth, torch.tensor((0.7 * 2.0 + 0.21 * 3.0) / 0.91))
    rgb, _, depth = centre(3.0, 2.0)  # swap depths: the colours swap
    torch.testing.assert_close(rgb, torch.tensor([0.3 * 0.7, 0.09, 0.7]))
    torch.testing.assert_close(depth, torch.tensor((0.7 * 2.0 + 0.21 * 3.0) / 0.91))
    rgb, _, _ = centre(2.5, 2.5)  # equal depths: Gaussian order decides, as in gsplat's stable sort
    torch.testing.assert_close(rgb, torch.tensor([0.7, 0.09, 0.3 * 0.7]))


@pytest.mark.parametrize("dense", [False, True])
def test_opaque_stack_stops_before_transmittance_reaches_1e_4(dense):
    # 20 Gaussians of opacity 0.5 on the axis: T = 0.5^k. The 14th would take T to 6e-5 <= 1e-4, so it and
    # everything behind it is skipped; the first 13 are red, the rest green.
    n, W = 20, 9
    z = 2.0 + 0.1 * torch.arange(n, dtype=torch.float32)
    rgb = torch.tensor([[1.0, 0.0, 0.0]] * 13 + [[0.0, 1.0, 0.0]] * (n - 13))
    p = particle(torch.stack([torch.zeros(n), torch.zeros(n), z], -1), (0.05 * z)[:, None], 0.5, rgb)
    a = S.activate(p)
    cam = pinhole(W, W, 20.0)
    colors, alphas, _ = reference.rasterization(
        a.means, a.quats, a.scales, a.opacities, a.sh, cam.viewmats, cam.Ks, W, W, sh_degree=0,
        backgrounds=torch.tensor([[0.0, 0.0, 1.0]]), dense=dense,
    )  # fmt: skip
    t = 0.5**13
    torch.testing.assert_close(alphas[0, 4, 4, 0], torch.tensor(1 - t))
    torch.testing.assert_close(colors[0, 4, 4, :3], torch.tensor([1 - t, 0.0, t]), atol=1e-7, rtol=1e-5)
    assert colors[0, 4, 4, 1] == 0.0  # not a trace of the green ones
    assert colors[0, 4, 5, 1] > 0.0  # the next pixel, with fainter alphas, reaches the green ones


# ---------------------------------------------------------------------------------------------- colour
def test_sh_bases_match_gsplats_constants():
    from gsplat.cuda._torch_impl import _eval_sh_bases_fast  # pure PyTorch, safe on CPU

    dirs = torch.nn.functional.normalize(torch.randn(100, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    for degree in range(4):
        torch.testing.assert_close(sh_bases(degree, dirs), _eval_sh_bases_fast((degree + 1) ** 2, dirs))


def test_sh_colour_degree_0_and_view_dependence_of_degree_1():
    sh0 = torch.tensor([[[1.2, -0.8, -3.0]]])  # the last channel goes negative and is clamped to 0
    shN = torch.zeros(1, 3, 3)
    shN[0, 2] = torch.tensor([0.5, 0.0, 0.0])  # basis 3 is -C1·x: red depends on the view's x direction
    p = S.from_tensors(torch.zeros(1, 3), torch.full((1, 3), math.log(0.3)), torch.tensor([[1.0, 0, 0, 0]]),
                       torch.full((1,), 10.0), sh0, shN)  # fmt: skip
    base = (0.5 + C0 * sh0[0, 0]).clamp(min=0)

    def colour(azimuth, sh_degree=None):
        one = lambda v: torch.tensor([float(v)])  # noqa: E731
        view = cams.orbit(one(0), one(azimuth), one(2.0), one(40), 9, 9)
        out = render(p, view, backend="reference", sh_degree=sh_degree)
        return out.rgb[0, :, 4, 4] / out.alpha[0, 0, 4, 4]

    torch.testing.assert_close(colour(0.0, sh_degree=0), base)
    torch.testing.assert_close(colour(0.0), base)  # looking along +Z: x = 0
    # azimuth 90: camera at +X, view direction -X, so -C1·x = +C1; azimuth 270: the opposite.
    torch.testing.assert_close(colour(90.0), base + torch.tensor([C1 * 0.5, 0, 0]))
    torch.testing.assert_close(colour(270.0), base - torch.tensor([C1 * 0.5, 0, 0]))
    torch.testing.assert_close(colour(270.0, sh_degree=0), base)  # progressive SH: the band is ignored


# ---------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("dense, mode", [(False, "classic"), (False, "antialiased"), (True, "classic")])
def test_gradcheck_float64(dense, mode):
    torch.manual_seed(0)
    n = 3
    inputs = dict(
        means=torch.tensor([[0.05, -0.02, 0.0], [-0.1, 0.05, 0.15], [0.08, 0.1, -0.1]]),
        scales=torch.log(torch.tensor([[0.08, 0.05, 0.06], [0.06, 0.1, 0.04], [0.05, 0.05, 0.09]])),
        quats=torch.randn(n, 4),
        opacities=torch.tensor([0.5, -0.3, 1.0]),
        sh0=torch.randn(n, 1, 3) * 0.5,
        shN=torch.randn(n, 3, 3) * 0.3,
        background=torch.tensor([0.2, 0.5, 0.9]),
    )
    inputs = {k: v.double().requires_grad_() for k, v in inputs.items()}
    view = orbit_views([10.0, 200.0], width=10, height=8, radius=1.0, dtype=torch.float64)

    def draw(means, scales, quats, opacities, sh0, shN, background):
        splats = dict(means=means, scales=scales, quats=quats, opacities=opacities, sh0=sh0, shN=shN)
        if not dense:
            out = render(splats, view, background, backend="reference", rasterize_mode=mode)
            return out.rgb, out.alpha, out.depth
        a = S.activate(splats)
        colors, alphas, _ = reference.rasterization(
            a.means, a.quats, a.scales, a.opacities, a.sh, view.viewmats, view.Ks, 10, 8, sh_degree=1,
            backgrounds=background.expand(2, 3), rasterize_mode=mode, dense=True,
        )  # fmt: skip
        return colors, alphas

    out = draw(*inputs.values())
    assert (out[1] > 0.3).any() and (out[1] < 0.01).any()  # Gaussians that overlap, and empty pixels
    # fast_mode checks random projections of the Jacobian instead of all 800 rows of it (seconds, not minutes).
    assert torch.autograd.gradcheck(draw, tuple(inputs.values()), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("mode", ["classic", "antialiased"])
def test_tiles_equal_dense_images_and_gradients(mode):
    params = random_scene(300, sh_degree=2, seed=1)
    params["means"][:20, 2] -= 3.0  # some behind the near plane of the azimuth-0 camera
    view = orbit_views([0.0, 140.0], width=42, height=30)  # 42 x 30: partial tiles at the edges
    bg = torch.tensor([[0.3, 0.6, 0.1], [1.0, 1.0, 1.0]])
    g = torch.Generator().manual_seed(2)
    up_rgb, up_alpha, up_depth = (torch.randn(2, 30, 42, k, generator=g) for k in (3, 1, 1))

    def run(dense, tile_size):
        p = as_params(params)
        a = S.activate(p)
        colors, alphas, meta = reference.rasterization(
            a.means, a.quats, a.scales, a.opacities, a.sh, view.viewmats, view.Ks, 42, 30, sh_degree=2,
            backgrounds=bg, rasterize_mode=mode, dense=dense, tile_size=tile_size, absgrad=True,
        )  # fmt: skip
        meta["means2d"].retain_grad()
        # Depth is weighted by alpha so that near-empty pixels (ED = tiny / tiny) do not dominate.
        loss = (colors[..., :3] * up_rgb).sum() + (alphas * up_alpha).sum()
        loss = loss + (colors[..., 3:] * alphas * up_depth).sum()
        loss.backward()
        grads = {k: v.grad for k, v in p.items()}
        grads.update(means2d=meta["means2d"].grad, absgrad=meta["means2d"].absgrad)
        return colors, alphas, grads

    dense = run(True, 4)
    assert dense[1].max() > 0.99 and (dense[1] < 0.5).float().mean() > 0.1  # saturated and sparse regions
    for tile_size in (4, 16):
        tiles = run(False, tile_size)
        torch.testing.assert_close(tiles[0][..., :3], dense[0][..., :3], atol=2e-6, rtol=0)
        torch.testing.assert_close(tiles[1], dense[1], atol=2e-6, rtol=0)
        lit = dense[1] > 0.05
        torch.testing.assert_close(tiles[0][..., 3:][lit], dense[0][..., 3:][lit], atol=1e-5, rtol=1e-5)
        for key, grad in dense[2].items():
            assert torch.isfinite(grad).all(), key
            torch.testing.assert_close(tiles[2][key], grad, atol=1e-5 * grad.abs().max().item(), rtol=1e-4, msg=key)


def test_packed_equals_unpacked():
    params = random_scene(200, sh_degree=1, seed=3)
    view = orbit_views([30.0, 250.0, 300.0])
    outs = {}
    for packed in (False, True):
        p = as_params(params)
        out = render(p, view, torch.ones(3), backend="reference", packed=packed)
        out.info["means2d"].retain_grad()
        (out.rgb.square().sum() + out.alpha.sum()).backward()
        outs[packed] = out, p
    (full, p_full), (packed, p_packed) = outs[False], outs[True]
    torch.testing.assert_close(packed.rgb, full.rgb)
    cam, gid = packed.info["camera_ids"], packed.info["gaussian_ids"]
    visible = (full.info["radii"] > 0).all(-1)
    assert torch.equal(torch.stack([cam, gid], -1), torch.nonzero(visible))  # gsplat's order: camera, then Gaussian
    assert gid.dtype == torch.int64 and packed.info["radii"].shape == (len(gid), 2)
    torch.testing.assert_close(packed.info["means2d"].grad, full.info["means2d"].grad[cam, gid])
    torch.testing.assert_close(p_packed["means"].grad, p_full["means"].grad)


def test_means2d_is_the_screen_space_gradient():
    # An isotropic Gaussian on the optical axis: moving it by dx in the world moves it by f·dx/z pixels,
    # and nothing else changes to first order, so d/dx = f/z · d/du.
    z, f = 2.0, 30.0
    p = particle([[0.0, 0.0, z]], 0.05, 0.7, [0.8, 0.3, 0.1])
    out = render(p, pinhole(16, 12, f), backend="reference")
    out.info["means2d"].retain_grad()
    (out.rgb[:, :, 7:, 9:] * torch.arange(3.0)[:, None, None]).sum().backward()  # lopsided in x and y
    g2d = out.info["means2d"].grad[0, 0]
    assert g2d.abs().min() > 1e-3
    torch.testing.assert_close(p["means"].grad[0, :2], g2d * f / z)


def test_info_has_gsplats_keys_and_shapes():
    p = as_params(random_scene(50, sh_degree=0, seed=4))
    view = orbit_views([0.0, 90.0])
    out = render(p, view, backend="reference")
    assert isinstance(out, RenderOutput)
    assert out.rgb.shape == (2, 3, 30, 42) and out.alpha.shape == (2, 1, 30, 42) and out.depth.shape == (2, 1, 30, 42)
    info = out.info
    assert info["means2d"].shape == (2, 50, 2) and info["means2d"].requires_grad and not info["means2d"].is_leaf
    assert info["radii"].shape == (2, 50, 2) and info["radii"].dtype == torch.int32
    assert info["depths"].shape == (2, 50) and info["conics"].shape == (2, 50, 3) and info["opacities"].shape == (2, 50)
    assert (info["width"], info["height"], info["n_cameras"], info["gaussian_ids"]) == (42, 30, 2, None)


# ---------------------------------------------------------------------------------------------- strategy
@pytest.mark.parametrize("packed", [False, True])
def test_default_strategy_accumulates_screen_gradients_on_cpu(packed):
    from gsplat.strategy import DefaultStrategy

    params = random_scene(120, sh_degree=0, seed=5)
    params["means"][:10] = torch.tensor([0.0, 0.0, -5.0])  # behind every azimuth-0 camera: culled
    params["means"][10:20] = torch.tensor([0.0, 40.0, 0.0])  # far below the frame: culled
    p = as_params(params)
    optimizers = {k: torch.optim.Adam([{"params": p[k], "lr": 1e-3, "name": k}]) for k in p}
    strategy = DefaultStrategy(refine_start_iter=0, refine_every=1, grow_grad2d=1e-9, verbose=False)
    strategy.check_sanity(p, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)

    view = orbit_views([0.0, 20.0], elevation=0.0, radius=2.5)
    out = render(p, view, torch.ones(3), backend="reference", packed=packed)
    strategy.step_pre_backward(p, optimizers, state, 0, out.info)
    out.rgb.mean().backward()
    strategy.step_post_backward(p, optimizers, state, 0, out.info, packed=packed)

    radii = out.info["radii"]
    visible = (radii > 0).all(-1) if not packed else torch.zeros(2, 120, dtype=torch.bool).index_put_(
        (out.info["camera_ids"], out.info["gaussian_ids"]), torch.tensor(True))  # fmt: skip
    assert not visible[:, :20].any() and visible[:, 20:].any(0).float().mean() > 0.8
    torch.testing.assert_close(state["count"], visible.sum(0).float())
    assert (state["grad2d"][:20] == 0).all()
    assert (state["grad2d"][visible.any(0)] > 0).all()
    # The accumulated value is the norm of means2d's gradient in gsplat's [-1, 1] screen units.
    g = out.info["means2d"].grad * torch.tensor([42 / 2 * 2, 30 / 2 * 2])
    if packed:
        expected = torch.zeros(120).index_add_(0, out.info["gaussian_ids"], g.norm(dim=-1))
    else:
        expected = (g.norm(dim=-1) * visible).sum(0)
    torch.testing.assert_close(state["grad2d"], expected)

    # Step 1 refines: every Gaussian seen with a gradient is duplicated or split; the particle keeps rendering.
    strategy.step_post_backward(p, optimizers, state, 1, out.info, packed=packed)
    assert p["means"].shape[0] > 120 and optimizers["means"].param_groups[0]["params"][0] is p["means"]
    assert render(p, view, backend="reference").rgb.isfinite().all()


def test_absgrad_reaches_the_strategy():
    from gsplat.strategy import DefaultStrategy

    p = as_params(random_scene(80, sh_degree=0, seed=6))
    view = orbit_views([0.0])
    strategy = DefaultStrategy(absgrad=True)
    state = strategy.initialize_state()
    out = render(p, view, backend="reference", absgrad=True)
    strategy.step_pre_backward(p, {}, state, 0, out.info)
    (out.rgb * torch.randn(out.rgb.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    strategy._update_state(p, state, out.info)
    absgrad, grad = out.info["means2d"].absgrad, out.info["means2d"].grad
    visible = (out.info["radii"] > 0).all(-1)
    assert (absgrad >= grad.abs() - 1e-7).all() and (absgrad[visible].sum(-1) > 0).all()
    assert (absgrad[visible] > grad[visible].abs() + 1e-6).any()  # per-pixel parts of opposite sign
    assert (state["grad2d"] > 0).sum() == visible.sum()


# ---------------------------------------------------------------------------------------------- backends
def test_backend_selection_errors():
    assert resolve_backend("reference", "cpu") == "reference"
    assert resolve_backend("auto", torch.device("cpu")) == "reference"
    with pytest.raises(BackendUnavailableError, match="backend='reference'"):
        resolve_backend("gsplat", "cpu")
    with pytest.raises(ConfigError, match="unknown rendering backend 'cuda'"):
        resolve_backend("cuda", "cpu")
    p = particle([[0.0, 0.0, 2.0]], 0.1, 0.5, [1.0, 0.0, 0.0])
    with pytest.raises(BackendUnavailableError):
        render(p, pinhole(8, 8, 10.0), backend="gsplat")
    if not torch.cuda.is_available():
        assert "gsplat.cuda._backend" not in sys.modules  # nothing tried to build the kernels


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rasterize_mode": "mip"}, "rasterize_mode"),
        ({"sh_degree": 1}, "sh_degree must lie in 0..0"),
        ({"background": torch.ones(2, 3)}, r"background must have shape \[3\] or \[1, 3\]"),
    ],
)
def test_bad_render_arguments_are_config_errors(kwargs, match):
    p = particle([[0.0, 0.0, 2.0]], 0.1, 0.5, [1.0, 0.0, 0.0])
    with pytest.raises(ConfigError, match=match):
        render(p, pinhole(8, 8, 10.0), backend="reference", **kwargs)


def test_packed_gsplat_call_composites_the_background_itself(monkeypatch):
    """gsplat 1.5.3 rejects per-camera backgrounds when packed (seen on an H100). A stand-in for gsplat with that
    restriction, rendering with the reference rasterizer, must give the reference's images and gradients."""
    import gsplat

    from splatdreamer.render import gsplat_backend

    calls = []

    def gsplat_1_5_3(*, backgrounds, packed, render_mode, **kwargs):
        assert render_mode == "RGB+ED"
        calls.append(backgrounds)
        assert not (packed and backgrounds is not None), "gsplat 1.5.3: [C, D] backgrounds fail when packed"
        return reference.rasterization(backgrounds=backgrounds, packed=packed, **kwargs)

    monkeypatch.setattr(gsplat, "rasterization", gsplat_1_5_3)
    params = random_scene(300, sh_degree=1, seed=3)
    view = orbit_views([0.0, 90.0, 200.0], width=24, height=20)
    bg = torch.rand(3, 3, generator=torch.Generator().manual_seed(4))
    up = torch.randn(3, 4, 20, 24, generator=torch.Generator().manual_seed(5))
    results = []
    for raster in (gsplat_backend.rasterization, reference.rasterization):
        p = as_params(params)
        a = S.activate(p)
        colors, alphas, _ = raster(
            a.means, a.quats, a.scales, a.opacities, a.sh, view.viewmats, view.Ks, 24, 20, sh_degree=1,
            backgrounds=bg, packed=True,
        )  # fmt: skip
        ((colors * up.permute(0, 2, 3, 1)).sum() + alphas.sum()).backward()
        results.append((colors, alphas, {k: v.grad for k, v in p.items()}))
    assert calls == [None]
    (colors, alphas, grads), (ref_colors, ref_alphas, ref_grads) = results
    assert (ref_colors[..., :3] - bg[:, None, None]).abs().amax() > 0.1  # the background shows, and matters
    torch.testing.assert_close(colors, ref_colors, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alphas, ref_alphas)
    for key in grads:
        torch.testing.assert_close(grads[key], ref_grads[key], atol=1e-5, rtol=1e-4, msg=key)


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("mode", ["classic", "antialiased"])
@pytest.mark.parametrize("sh_degree", [0, 3])
def test_gsplat_and_reference_agree(packed, mode, sh_degree):
    assert resolve_backend("auto", "cuda") == "gsplat"
    params = random_scene(2000, sh_degree=3, seed=7)
    view = orbit_views([0.0, 120.0, 240.0], width=96, height=64).to("cuda")
    bg = torch.rand(3, 3, generator=torch.Generator().manual_seed(8)).cuda()
    g = torch.Generator().manual_seed(9)
    up = torch.randn(3, 3, 64, 96, generator=g).cuda()
    results = {}
    for backend in ("gsplat", "reference"):
        p = as_params(params).cuda()
        out = render(p, view, bg, backend=backend, sh_degree=sh_degree, rasterize_mode=mode, packed=packed)
        ((out.rgb * up).sum() + out.alpha.sum()).backward()
        results[backend] = out, {k: v.grad for k, v in p.items()}
    (g_out, g_grads), (r_out, r_grads) = results["gsplat"], results["reference"]
    torch.testing.assert_close(r_out.rgb, g_out.rgb, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(r_out.alpha, g_out.alpha, atol=1e-4, rtol=1e-4)
    lit = g_out.alpha > 0.05
    torch.testing.assert_close(r_out.depth[lit], g_out.depth[lit], atol=1e-3, rtol=1e-3)
    for key, grad in g_grads.items():
        if key == "shN" and sh_degree == 0:
            assert (r_grads[key] == 0).all() and (grad == 0).all()
            continue
        scale = grad.abs().max().item()
        torch.testing.assert_close(r_grads[key], grad, atol=5e-3 * scale, rtol=5e-2, msg=key)


def test_render_refuses_what_is_not_a_particle_with_the_key_and_the_fix():
    """Found by a hostile-input pass: float64 particles (NumPy's default), a wrong shape or a missing key met a
    dtype error from torch, a bare assertion or an AttributeError; a list background and zero cameras too."""
    ball = S.random_ball(50, generator=torch.Generator().manual_seed(0))
    views = cams.turntable(2, 16, 16)
    plain = {k: v.detach() for k, v in ball.items()}
    for particle, message in [
        ({k: v.double() for k, v in plain.items()}, "the particle is float64 and the cameras float32; particles are"),
        ({**plain, "sh0": plain["sh0"].half()}, r"particle\['sh0'\] is float16 and 'means' float32"),
        ({**plain, "means": plain["means"][:, :2]}, r"particle\['means'\] has shape \[50, 2\]; expected \[50, 3\]"),
        ({**plain, "sh0": plain["sh0"][:10]}, r"particle\['sh0'\] has shape \[10, 1, 3\]; expected \[50, 1, 3\]"),
        ({**plain, "shN": torch.zeros(50, 2, 3)}, r"particle\['shN'\] has shape \[50, 2, 3\]; expected \[N, K, 3\]"),
        ({k: v for k, v in plain.items() if k != "shN"}, "this one lacks shN"),
        ({**plain, "quats": plain["quats"].tolist()}, r"particle\['quats'\] must be a torch tensor, got list"),
    ]:
        with pytest.raises(ConfigError, match=message):
            render(particle, views, backend="reference")
    with pytest.raises(ConfigError, match="render needs one or more Cameras"):
        render(plain, views[:0], backend="reference")
    with pytest.raises(ConfigError, match="a turntable needs one or more cameras, got num=0"):
        cams.turntable(0, 16, 16)
    with pytest.raises(ConfigError, match="background must be an RGB colour"):
        render(plain, views, background="white", backend="reference")
    as_list = render(plain, views, background=[0.0, 0.0, 1.0], backend="reference").rgb
    as_tensor = render(plain, views, background=torch.tensor([0.0, 0.0, 1.0]), backend="reference").rgb
    assert torch.equal(as_list, as_tensor) and as_tensor[:, 2, 0, 0].min() > 0.9  # the blue corner
