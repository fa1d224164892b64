import dataclasses
from pathlib import Path

import pytest

from splatdreamer.cli import _split_preset
from splatdreamer.config import GenerateConfig, load_json, prompt_slug, save_json
from splatdreamer.errors import ConfigError
from splatdreamer.presets import PRESETS


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(prompt="   "), "prompt is empty"),
        (dict(steps=0), "--steps must be positive"),
        (dict(particles=-1), "--particles must be positive"),
    ],
)
def test_validate_rejects_bad_top_level_values(change, match):
    config = dataclasses.replace(GenerateConfig(prompt="a red ball"), **change)
    with pytest.raises(ConfigError, match=match):
        config.validate()


def test_validate_rejects_bad_nested_values():
    config = GenerateConfig(prompt="a red ball")
    config.splats.resolution = 0
    with pytest.raises(ConfigError, match="--splats.resolution must be positive"):
        config.validate()
    config = GenerateConfig(prompt="a red ball")
    config.vsd.t_max_annealed = 990
    with pytest.raises(ConfigError, match="t_max_annealed"):
        config.validate()


def test_every_preset_is_valid():
    for name, make in PRESETS.items():
        config = make()
        config.prompt = "a red ball"
        config.validate()


def test_json_round_trip(tmp_path: Path):
    config = PRESETS["toy"]()
    config.prompt = "a blue cube"
    config.output.out_dir = tmp_path / "run"
    config.output.formats = ("ply", "splat")
    save_json(config, tmp_path / "c.json")
    assert load_json(tmp_path / "c.json") == config


def test_saved_config_with_unknown_field_is_rejected(tmp_path: Path):
    (tmp_path / "c.json").write_text('{"prompt": "x", "bogus": 1}')
    with pytest.raises(ConfigError, match="bogus"):
        load_json(tmp_path / "c.json")


def test_preset_flag_is_taken_out_of_the_arguments():
    base, rest = _split_preset(["--prompt", "x", "--preset", "toy", "--steps", "5"])
    assert rest == ["--prompt", "x", "--steps", "5"]
    assert base == PRESETS["toy"]()
    base, rest = _split_preset(["--preset=paper"])
    assert base.particles == 4 and rest == []
    with pytest.raises(ConfigError, match="unknown preset 'nope'; choose one of: default, paper, fast, toy"):
        _split_preset(["--preset", "nope"])


def test_prompt_slug():
    assert prompt_slug("A red ball!") == "a_red_ball"
    assert prompt_slug("???") == "run"
