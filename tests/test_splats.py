import math

import pytest
import torch

from splatdreamer import splats as S
from splatdreamer.errors import ConfigError, NonFiniteError


def test_random_ball_layout_and_statistics():
    p = S.random_ball(4000, radius=0.5, init_opacity=0.1, sh_degree=2, generator=torch.Generator().manual_seed(0))
    assert set(p.keys()) == set(S.KEYS)
    assert p["means"].shape == (4000, 3) and p["shN"].shape == (4000, 8, 3) and p["opacities"].shape == (4000,)
    assert S.sh_degree_of(p) == 2
    r = p["means"].norm(dim=-1)
    assert r.max() <= 0.5
    # Uniform in volume: the fraction inside half the radius is 1/8.
    assert abs((r < 0.25).float().mean().item() - 0.125) < 0.02
    torch.testing.assert_close(torch.sigmoid(p["opacities"]), torch.full((4000,), 0.1))
    expected_scale = 0.5 * (4 / 3 * math.pi / 4000) ** (1 / 3) / 2
    torch.testing.assert_close(torch.exp(p["scales"]), torch.full((4000, 3), expected_scale))
    rgb = S.sh0_to_rgb(p["sh0"][:, 0])
    assert abs(rgb.mean().item() - 0.5) < 0.01


def test_activation_and_sh_conversion():
    p = S.random_ball(10, generator=torch.Generator().manual_seed(0))
    a = S.activate(p)
    torch.testing.assert_close(a.quats.norm(dim=-1), torch.ones(10))
    rgb = torch.tensor([[0.2, 0.4, 0.9]])
    torch.testing.assert_close(S.sh0_to_rgb(S.rgb_to_sh0(rgb)), rgb)
    assert a.sh.shape == (10, 1, 3)


def test_random_ball_is_seeded():
    a = S.random_ball(50, generator=torch.Generator().manual_seed(3))
    b = S.random_ball(50, generator=torch.Generator().manual_seed(3))
    for k in S.KEYS:
        assert torch.equal(a[k], b[k])


@pytest.mark.parametrize(
    "kwargs, match",
    [({"num": 0}, "at least one"), ({"num": 5, "init_opacity": 1.0}, "init_opacity"), ({"num": 5, "sh_degree": 4}, "sh_degree")],
)
def test_bad_initialisation_is_a_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        S.random_ball(**kwargs)


def test_check_finite_names_the_parameter():
    p = S.random_ball(5, generator=torch.Generator().manual_seed(0))
    S.check_finite(p)
    assert S.all_finite(p).item() is True
    with torch.no_grad():
        p["scales"][2, 1] = float("nan")
    with pytest.raises(NonFiniteError, match="1 Gaussians have a NaN or Inf in 'scales'"):
        S.check_finite(p)
    assert S.all_finite(p).item() is False
