import dataclasses
import json
import typing
from pathlib import Path

import pytest

from splatdreamer.cli import _starting_config, main
from splatdreamer.config import GenerateConfig, changed_fields, load_json, prompt_slug, save_json, to_dict
from splatdreamer.errors import ConfigError
from splatdreamer.presets import PRESETS


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(prompt="   "), "prompt is empty"),
        (dict(steps=0), "--steps must be positive"),
        (dict(particles=-1), r"--particles must be in \(0, 256\], got -1"),
    ],
)
def test_validate_rejects_bad_top_level_values(change, match):
    config = dataclasses.replace(GenerateConfig(prompt="a red ball"), **change)
    with pytest.raises(ConfigError, match=match):
        config.validate()


def test_validate_rejects_bad_nested_values():
    config = GenerateConfig(prompt="a red ball")
    config.splats.resolution = 0
    with pytest.raises(ConfigError, match=r"--splats.resolution must be in \(0, 4096\], got 0"):
        config.validate()
    config = GenerateConfig(prompt="a red ball")
    config.vsd.t_max_annealed = 990
    with pytest.raises(ConfigError, match="--vsd.t-max-annealed 990"):
        config.validate()
    for bad, match in [(1000, r"--vsd.cfg-max-t must be in \[0, 999\], got 1000"), (-5, r"--vsd.cfg-max-t must be in \[0, 999\], got -5")]:
        config = GenerateConfig(prompt="a red ball")
        config.vsd.cfg_max_t = bad
        with pytest.raises(ConfigError, match=match):
            config.validate()
    config = GenerateConfig(prompt="a red ball")
    config.vsd.phi_min_t = 1000
    with pytest.raises(ConfigError, match=r"--vsd.phi-min-t must be in \[0, 999\], got 1000"):
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


def test_the_starting_config_is_found_wherever_its_flag_stands(tmp_path: Path):
    base, given = _starting_config(["--prompt", "x", "--preset", "toy", "--steps", "5"])
    assert base == PRESETS["toy"]() and given == ("--preset", "toy")
    base, given = _starting_config(["--steps", "5", "--preset=paper"])
    assert base.particles == 4 and given == ("--preset", "paper")
    assert _starting_config(["--prompt", "x"]) == (PRESETS["default"](), None)
    save_json(GenerateConfig(prompt="from a file", steps=7), tmp_path / "c.json")
    assert _starting_config(["--config", str(tmp_path / "c.json")])[0].steps == 7
    with pytest.raises(ConfigError, match="unknown preset 'nope'; choose one of: default, paper, fast, toy"):
        _starting_config(["--preset", "nope"])
    with pytest.raises(ConfigError, match="give one starting point, not --preset toy and --config c.json"):
        _starting_config(["--preset", "toy", "--config", "c.json"])


def test_flags_override_the_preset_wherever_they_stand(tmp_path: Path, monkeypatch):
    seen = []
    import importlib

    module = importlib.import_module("splatdreamer.generate")  # the module; splatdreamer.generate is the function
    monkeypatch.setattr(module, "generate", lambda config, **options: seen.append(config))
    assert main(["generate", "--steps", "5", "--preset", "toy", "--prompt", "a"]) == 0
    assert main(["generate", "--preset", "toy", "--steps", "5", "--prompt", "a"]) == 0
    assert seen[0] == seen[1] and seen[0].steps == 5 and seen[0].prior.name == PRESETS["toy"]().prior.name


@pytest.mark.parametrize(
    ("flags", "mode", "scale"),
    [
        ([], "vsd", 1.0),  # the toy preset's VSD: CFG 1 (docs/benchmarks.md, "The preset: falling t at CFG 1")
        (["--vsd.mode", "sds"], "sds", 100.0),  # ... and its SDS baseline keeps DreamFusion's 100
        (["--vsd.mode", "sds", "--vsd.cfg-scale", "7.5"], "sds", 7.5),  # a typed scale counts in either mode
        (["--vsd.cfg-scale", "7.5"], "vsd", 7.5),
        (["--vsd.cfg-scale-vsd", "3"], "vsd", 3.0),
        (["--vsd.cfg-scale-vsd", "3", "--vsd.mode", "sds"], "sds", 100.0),
    ],
)
def test_the_toy_preset_guides_vsd_at_1_and_sds_at_100(monkeypatch, flags, mode, scale):
    seen = []
    import importlib

    module = importlib.import_module("splatdreamer.generate")
    monkeypatch.setattr(module, "generate", lambda config, **options: seen.append(config))
    assert main(["generate", "--preset", "toy", "--prompt", "a ball", *flags]) == 0
    assert (seen[0].vsd.mode, seen[0].vsd.guidance(), seen[0].vsd.t_schedule) == (mode, scale, "decreasing")
    assert GenerateConfig().vsd.guidance() == 7.5  # the official scale stays the default of every other start


def test_a_config_saved_before_the_per_mode_scales_keeps_its_guidance(tmp_path: Path):
    """Runs saved before --vsd.cfg-scale-vsd existed ran VSD at 7.5 (the toy preset too); resumed, they still do."""
    data = to_dict(PRESETS["toy"]())
    for name in ("cfg_scale_vsd", "cfg_scale_sds"):
        del data["vsd"][name]
    (tmp_path / "config.json").write_text(json.dumps(data))
    old = load_json(tmp_path / "config.json")
    assert (old.vsd.cfg_scale, old.vsd.guidance()) == (None, 7.5)
    old.vsd.mode = "sds"
    assert old.vsd.guidance() == 100.0


def test_prompt_slug():
    assert prompt_slug("A red ball!") == "a_red_ball"
    assert prompt_slug("???") == "run"
    # Letters the ASCII slug drops get a hash of the prompt: two Japanese prompts shared runs/run, and the
    # advice to pass --output.overwrite would have deleted the first one's run (a hostile-input pass).
    red, blue = prompt_slug("赤いボール"), prompt_slug("青いキューブ")
    assert red.startswith("run_") and blue.startswith("run_") and red != blue and len(red) == 12
    assert prompt_slug("a café") != prompt_slug("a caf") and prompt_slug("a café").startswith("a_caf_")


def _number_fields(cls=GenerateConfig, prefix=""):
    """Dotted names of every float setting (plain, optional or in a tuple), found by type as the check finds them."""
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            yield from _number_fields(hint, prefix + f.name + ".")
        elif float in (hint, *typing.get_args(hint)):
            yield prefix + f.name


def _set(config, dotted, value):
    *parents, name = dotted.split(".")
    for p in parents:
        config = getattr(config, p)
    old = getattr(config, name)
    setattr(config, name, tuple(value for _ in old) if isinstance(old, tuple) else value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_every_float_setting_must_be_finite(value):
    names = list(_number_fields())
    assert "vsd.cfg_scale" in names and "splats.lr_means" in names and "cameras.radius" in names
    for name in names:
        config = GenerateConfig(prompt="a red ball")
        _set(config, name, value)
        flag = "--" + name.replace("_", "-")
        with pytest.raises(ConfigError, match=rf"^{flag}(\[0\])? must be a finite number, got {value}"):
            config.validate()


def test_lists_are_taken_where_a_setting_is_a_tuple():
    """Python users write lists; a hostile-input pass found them refused as "(Literal, Ellipsis)"."""
    config = GenerateConfig(prompt="a red ball")
    config.cameras.radius = [1.6, 2.0]
    config.output.formats = ["ply", "splat"]
    config.validate()
    assert config.cameras.radius == (1.6, 2.0) and config.output.formats == ("ply", "splat")
    assert to_dict(config)["cameras"]["radius"] == [1.6, 2.0]


@pytest.mark.parametrize(
    "name, value, match",
    [
        ("steps", "10", r"--steps must be a whole number, got '10' \(str\)"),
        ("particles", 2.5, r"--particles must be a whole number, got 2.5"),
        ("prompt", None, r"--prompt must be a string, got None"),
        ("seed", 10**23, r"--seed must be in \[0, 9223372036854775806\], got 100000000000000000000000"),
        ("seed", -1, r"--seed must be in \[0, 9223372036854775806\], got -1"),
        ("device", "gpu", r"--device must be one of 'auto', 'cpu', 'cuda', got 'gpu'"),
        ("vsd.cfg_scale", "7.5", r"--vsd.cfg-scale must be a number, got '7.5'"),
        ("vsd.view_dependent_prompts", 1, r"--vsd.view-dependent-prompts must be true or false, got 1"),
        ("splats.resolution", 100000, r"--splats.resolution must be in \(0, 4096\], got 100000"),
        ("splats.sh_degree", 4, r"--splats.sh-degree must be in \[0, 3\], got 4"),
        ("splats.init_opacity", 1.0, r"--splats.init-opacity must be in \(0, 0.999\], got 1.0"),
        ("splats.lr_means", 0.0, r"--splats.lr-means must be positive, got 0.0"),
        ("cameras.radius", (1.0,), r"--cameras.radius must be 2 values, got \(1.0,\)"),
        ("cameras.radius", [1.0], r"--cameras.radius must be 2 values, got \(1.0,\)"),
        ("cameras.background", "pink", r"--cameras.background must be one of 'white', 'black', 'random', 'white_bl"),
        ("output.formats", "ply", r"--output.formats must be a tuple"),
        ("output.formats", ("ply", "obj"), r"--output.formats\[1\] must be one of 'ply', 'splat', 'ply_compressed'"),
        ("output.formats", (), r"--output.formats is empty"),
        ("output.formats", ("ply", "splat", "ply"), r"--output.formats names ply more than once"),
        ("particles", 10**8, r"--particles must be in \(0, 256\], got 100000000"),
        ("vsd.views_per_particle", 10**8, r"--vsd.views-per-particle must be in \(0, 64\], got 100000000"),
        ("splats.num_init", 10**12, r"--splats.num-init must be in \(0, 10000000\], got 1000000000000"),
        ("prior.lora_rank", 10**9, r"--prior.lora-rank must be in \(0, 1024\], got 1000000000"),
        ("output.out_dir", 3, r"--output.out-dir must be a path, got 3"),
        ("output.checkpoint_every", -1, r"--output.checkpoint-every must be >= 0, got -1"),
        ("output.preview_every", -1, r"--output.preview-every must be >= 0, got -1"),
        ("output.preview_size", 10**6, r"--output.preview-size must be in \(0, 4096\], got 1000000"),
        ("prior", {"name": "toy"}, r"--prior must be a PriorConfig, got \{'name': 'toy'\}"),
    ],
)
def test_bad_values_from_python_are_config_errors(name, value, match):
    config = GenerateConfig(prompt="a red ball")
    *parents, leaf = name.split(".")
    target = config
    for p in parents:
        target = getattr(target, p)
    setattr(target, leaf, value)
    with pytest.raises(ConfigError, match=match):
        config.validate()


def test_a_path_may_be_given_as_a_string():
    config = GenerateConfig(prompt="a red ball")
    config.output.out_dir = "runs/x"
    config.validate()


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d.update(steps="300"), r"--steps must be a whole number, got '300'"),
        (lambda d: d.update(steps=3.5), r"--steps must be a whole number, got 3.5"),
        (lambda d: d.update(steps=None), r"--steps must be a whole number, got None"),
        (lambda d: d.update(seed=1e23), r"--seed must be a whole number, got 1e\+23"),
        (lambda d: d.update(prompt=["a", "ball"]), r"--prompt must be a string"),
        (lambda d: d.update(particles=True), r"--particles must be a whole number, got True"),
        (lambda d: d.update(device=0), r"--device must be one of 'auto', 'cpu', 'cuda', got 0"),
        (lambda d: d.update(prior="toy"), r"--prior must be a JSON object"),
        (lambda d: d["vsd"].update(cfg_scale="high"), r"--vsd.cfg-scale must be a number, got 'high'"),
        (lambda d: d["vsd"].update(cfg_scale=float("nan")), r"--vsd.cfg-scale must be a finite number, got nan"),
        (lambda d: d["vsd"].update(grad_clip=[1]), r"--vsd.grad-clip must be a number"),
        (lambda d: d["splats"].update(packed="no"), r"--splats.packed must be true or false, got 'no'"),
        (lambda d: d["cameras"].update(radius=2.0), r"--cameras.radius must be a tuple"),
        (lambda d: d["cameras"].update(fovy=[40, "wide"]), r"--cameras.fovy\[1\] must be a number, got 'wide'"),
        (lambda d: d["output"].update(out_dir=5), r"--output.out-dir must be a path, got 5"),
        (lambda d: d["output"].update(formats=[["ply"]]), r"--output.formats\[0\] must be one of"),
    ],
)
def test_a_type_edited_config_json_is_one_clear_error(tmp_path: Path, edit, match):
    config = PRESETS["toy"]()
    config.prompt = "a red ball"
    save_json(config, tmp_path / "config.json")
    data = json.loads((tmp_path / "config.json").read_text())
    edit(data)
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=rf"^the config {tmp_path / 'config.json'}: {match}.*correct it"):
        load_json(tmp_path / "config.json")


def test_a_type_edited_config_json_exits_2_through_the_cli(tmp_path: Path, capsys):
    (tmp_path / "config.json").write_text('{"prompt": "a red ball", "steps": "many"}')
    assert main(["generate", "--config", str(tmp_path / "config.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("splatdreamer: error: the config") and "--steps must be a whole number" in err


def test_nan_from_the_command_line_is_refused(tmp_path: Path, capsys):
    args = ["generate", "--prompt", "a", "--output.out-dir", str(tmp_path / "run")]
    assert main([*args, "--vsd.cfg-scale", "nan"]) == 2
    assert "--vsd.cfg-scale must be a finite number, got nan" in capsys.readouterr().err
    assert main([*args, "--splats.init-radius", "inf"]) == 2
    assert "--splats.init-radius must be a finite number, got inf" in capsys.readouterr().err
    assert main([*args, "--seed", "100000000000000000000000"]) == 2
    assert "--seed must be in [0, 9223372036854775806]" in capsys.readouterr().err
    assert main([*args, "--output.checkpoint-every", "-1"]) == 2
    assert "--output.checkpoint-every must be >= 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_changed_fields_names_nested_fields():
    a, b = GenerateConfig(), GenerateConfig(steps=5)
    b.vsd.cfg_scale = 100.0
    assert changed_fields(b, a) == ["steps", "vsd.cfg_scale"]


def test_numpy_numbers_are_taken_as_python_numbers():
    """Found by a hostile-input pass: np.float32(7.5) and np.int64(2) were refused while np.float64 passed, and a
    NumPy number kept in the config would not survive its JSON round trip."""
    import numpy as np

    from splatdreamer.config import from_dict, to_dict
    from splatdreamer.presets import toy

    config = toy()
    config.prompt, config.steps = "a ball", np.int64(2)
    config.vsd.cfg_scale, config.splats.init_scale = np.float32(7.5), np.float64(0.01)
    config.validate()
    assert (type(config.steps), type(config.vsd.cfg_scale), type(config.splats.init_scale)) == (int, float, float)
    assert from_dict(GenerateConfig, to_dict(config)) == config
    config.steps = np.float64(2.0)  # a float where a whole number belongs stays an error, as 2.0 is
    with pytest.raises(ConfigError, match="--steps must be a whole number"):
        config.validate()
