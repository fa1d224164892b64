"""The `render`, `convert` and `doctor` subcommands, through `splatdreamer.cli.main` as a user runs them."""

from __future__ import annotations

import os
import re
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from splatdreamer.cli import main
from splatdreamer.io.ply import load_ply, save_ply
from splatdreamer.toy.objects import PALETTE, variants


@pytest.fixture(scope="module")
def red_ball(tmp_path_factory):
    path = tmp_path_factory.mktemp("ply") / "ball.ply"
    save_ply(variants("a red ball")[0].splats, path)
    return path


def test_render_writes_a_sheet_of_the_object_and_a_turntable(red_ball, tmp_path, capsys):
    out = tmp_path / "pictures" / "ball"
    out.parent.mkdir()
    assert main(["render", str(red_ball), "--out", str(out), "--size", "32", "--frames", "4", "--device", "cpu"]) == 0
    assert f"wrote {out}.png and {out}.gif" in capsys.readouterr().out
    sheet = np.asarray(Image.open(f"{out}.png").convert("RGB")).astype(int)
    assert sheet.shape == (3 * 32 + 2 * 2, 4 * 32 + 3 * 2, 3)  # the 12 evaluation views, 4 per row
    red = np.array(PALETTE["red"]) * 255
    for row in range(3):
        for col in range(4):
            y, x = row * 34, col * 34
            assert np.abs(sheet[y + 16, x + 16] - red).max() < 40  # the ball in the middle of every view
            assert (sheet[y + 1, x + 1] > 245).all()  # white background in the corner
    gif = Image.open(f"{out}.gif")
    assert gif.n_frames >= 1 and gif.size == (32, 32)


def test_render_says_when_every_view_is_empty_and_what_the_file_holds(red_ball, tmp_path, capsys):
    """Found by a hostile-input pass: a file whose Gaussians are all 1e30 wide rendered blank images without a
    word. The same note for a fully transparent ball; none for the ball itself, on any background."""
    ball = load_ply(red_ball, requires_grad=False)
    huge, clear = ball.copy(), ball.copy()
    huge["scales"] = torch.full_like(ball["scales"], 69.0)  # exp: 9e29
    clear["opacities"] = torch.full_like(ball["opacities"], -30.0)
    for name, splats, says in [("huge", huge, "median largest scale 9.25e+29"), ("clear", clear, "at most 9.36e-14")]:
        save_ply(splats, tmp_path / f"{name}.ply")
        assert main(["render", str(tmp_path / f"{name}.ply"), "--size", "24", "--frames", "2", "--device", "cpu"]) == 0
        out = capsys.readouterr().out
        assert "note: every view shows only the background" in out and says in out, (name, out)
    for background in (["1", "1", "1"], ["0", "0", "0"]):
        args = ["render", str(red_ball), "--out", str(tmp_path / "ball"), "--size", "24", "--frames", "2"]
        assert main([*args, "--background", *background, "--device", "cpu"]) == 0
        assert "note" not in capsys.readouterr().out


def test_render_and_convert_of_a_file_without_gaussians_say_so_and_write_nothing(red_ball, tmp_path, capsys):
    """Found by a hostile-input pass: render wrote its pictures and then failed with a traceback; convert wrote an
    empty .splat that nothing reads back."""
    empty = load_ply(red_ball, requires_grad=False)
    empty = {k: v[:0] for k, v in empty.items()}
    save_ply(torch.nn.ParameterDict(empty), tmp_path / "none.ply")
    assert main(["render", str(tmp_path / "none.ply"), "--size", "16", "--frames", "2", "--device", "cpu"]) == 2
    assert main(["convert", str(tmp_path / "none.ply"), str(tmp_path / "none.splat")]) == 2
    err = capsys.readouterr().err
    assert err.count("none.ply holds no Gaussians (its vertex count is 0); there is nothing to") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["none.ply"]


def test_toy_help_is_help_and_a_wrong_toy_command_is_named(capsys):
    """Found by a hostile-input pass: `splatdreamer toy --help` (as docs/usage.md shows) exited 2 with an error."""
    assert main(["toy", "--help"]) == 0 and main(["toy", "-h"]) == 0
    out = capsys.readouterr().out
    assert out.count("usage: splatdreamer toy {train,eval} [--help]") == 2 and "splatdreamer toy eval --help" in out
    assert main(["toy", "bogus"]) == 2 and "unknown toy command 'bogus'" in capsys.readouterr().err


def test_help_into_a_closed_pipe_stops_quietly():
    """Found by a hostile-input pass: `splatdreamer generate --help | head` ended in a BrokenPipeError traceback."""
    import subprocess
    import sys

    code = "import sys; from splatdreamer.cli import main; sys.exit(main(['generate', '--help']))"
    shell = f"{sys.executable} -c \"{code}\" | head -c 10"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True, timeout=120)
    assert done.stdout == "usage: spl" and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done


def test_render_of_a_broken_file_is_one_clear_error(tmp_path, capsys):
    bad = tmp_path / "broken.ply"
    bad.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 10\nend_header\n")
    assert main(["render", str(bad), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("splatdreamer: error:") and "broken.ply" in err and "Traceback" not in err
    assert not (tmp_path / "broken.png").exists() and not (tmp_path / "broken.gif").exists()


def test_render_keeps_dotted_names_apart(red_ball, tmp_path, capsys):
    for version in ("v1", "v2"):
        (tmp_path / f"scene.{version}.ply").write_bytes(red_ball.read_bytes())
        args = ["render", str(tmp_path / f"scene.{version}.ply"), "--size", "8", "--frames", "1", "--device", "cpu"]
        assert main(args) == 0
    assert sorted(p.name for p in tmp_path.glob("scene*.png")) == ["scene.v1.png", "scene.v2.png"]
    assert sorted(p.name for p in tmp_path.glob("scene*.gif")) == ["scene.v1.gif", "scene.v2.gif"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--frames", "0"], "--frames must be in (0, 3600], got 0"),
        (["--frames", "-1"], "--frames must be in (0, 3600], got -1"),
        (["--size", "0"], "--size must be in (0, 4096], got 0"),
        (["--size", "100000"], "--size must be in (0, 4096], got 100000"),
        (["--background", "1", "nan", "1"], "--background[1] must be a finite number, got nan"),
        (["--background", "2", "0", "0"], "--background must be in [0, 1], got (2.0, 0.0, 0.0)"),
    ],
)
def test_render_refuses_bad_settings_before_writing_anything(red_ball, tmp_path, capsys, flags, message):
    assert main(["render", str(red_ball), "--out", str(tmp_path / "x"), "--device", "cpu", *flags]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_render_and_convert_of_a_fifo_fail_at_once(tmp_path, capsys):
    fifo = tmp_path / "scene.ply"
    os.mkfifo(fifo)
    codes = []
    worker = threading.Thread(target=lambda: codes.extend([main(["render", str(fifo), "--device", "cpu"]),
                                                           main(["convert", str(fifo), str(tmp_path / "x.splat")])]),
                              daemon=True)  # fmt: skip
    worker.start()
    worker.join(timeout=20)
    if worker.is_alive():  # unblock it before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert codes == [2, 2]
    assert capsys.readouterr().err.count("it is a FIFO; give a .ply file") == 2


def test_convert_to_splat_keeps_the_gaussians(red_ball, tmp_path, capsys):
    out = tmp_path / "ball.splat"
    assert main(["convert", str(red_ball), str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    splats = load_ply(red_ball, requires_grad=False)
    n = splats["means"].shape[0]
    rows = np.frombuffer(out.read_bytes(), dtype=np.uint8).reshape(n, 32)  # antimatter15: 32 bytes per Gaussian
    positions = np.sort(rows[:, :12].copy().view(np.float32).reshape(n, 3), axis=0)
    np.testing.assert_array_equal(positions, np.sort(splats["means"].numpy(), axis=0))
    colours = rows[:, 24:27].astype(float) / 255  # RGB of every Gaussian: the red of the palette
    assert np.abs(colours - np.array(PALETTE["red"])).max() < 0.01


def test_convert_to_ply_round_trips_and_bad_names_are_refused(red_ball, tmp_path, capsys):
    copy = tmp_path / "copy.ply"
    assert main(["convert", str(red_ball), str(copy)]) == 0
    for key, value in load_ply(red_ball).items():
        assert torch.equal(load_ply(copy)[key], value), key
    assert main(["convert", str(red_ball), str(tmp_path / "ball.obj")]) == 2
    assert "end it in .ply" in capsys.readouterr().err
    assert not (tmp_path / "ball.obj").exists()
    assert main(["convert", str(tmp_path / "missing.ply"), str(tmp_path / "x.splat")]) == 2
    assert "missing.ply" in capsys.readouterr().err


def test_doctor_reports_this_machine_and_the_next_step(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    lines = dict(line.split(None, 1) for line in out.splitlines() if line and not line.startswith((" ", "next")))
    assert lines["torch"].startswith(torch.__version__)
    assert lines["toy"].startswith("prior") and "found" in lines["toy"] and " MB)" in lines["toy"]
    if not torch.cuda.is_available():
        assert "no CUDA device" in out
        assert "next: splatdreamer generate --preset toy --prompt 'a red ball'" in out


def test_doctor_finds_a_half_downloaded_stable_diffusion(tmp_path):
    """The HF cache layout (refs/main -> snapshots/<rev>/) with a complete tiny SD, then without the UNet's weights."""
    from splatdreamer.doctor import hub_prior_status
    from tiny_models import build_tiny_sd

    repo = tmp_path / "models--owner--sd"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abc")
    snapshot = build_tiny_sd(repo / "snapshots" / "0123abc", sample_size=16)
    assert hub_prior_status("owner/sd", cache_dir=tmp_path) == f"in the local HF cache ({snapshot})"
    (snapshot / "unet" / "diffusion_pytorch_model.safetensors").unlink()  # its download never finished
    status = hub_prior_status("owner/sd", cache_dir=tmp_path)
    assert status.startswith("incomplete in the local HF cache:") and "unet/ has no weights" in status
    assert status.endswith("download it again (huggingface-cli download owner/sd)")
    assert hub_prior_status("owner/other", cache_dir=tmp_path) == "not in the local HF cache"


def test_convert_refuses_a_folder_as_its_output(red_ball, tmp_path, capsys):
    assert main(["convert", str(red_ball), str(tmp_path)]) == 2
    assert f"the output {tmp_path} is a folder" in capsys.readouterr().err


def test_outputs_that_cannot_be_written_are_one_clear_error(red_ball, tmp_path, capsys, monkeypatch):
    """Found by a hostile-input pass: a parent that is a file, or `render --out .`, gave pathlib tracebacks."""
    (tmp_path / "afile").write_text("hi")
    blocked = tmp_path / "afile"
    assert main(["convert", str(red_ball), str(blocked / "out.splat")]) == 2
    assert f"cannot write {blocked / 'out.splat'}: {blocked} is a file, not a folder" in capsys.readouterr().err
    assert main(["render", str(red_ball), "--out", str(blocked / "x"), "--frames", "2", "--size", "16"]) == 2
    assert f"cannot write {blocked / 'x'}: {blocked} is a file, not a folder" in capsys.readouterr().err
    assert main(["render", str(red_ball), "--out", f"{blocked}/", "--frames", "2", "--size", "16"]) == 2
    assert f"cannot write {blocked / 'ball'}: {blocked} is a file, not a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_render_out_may_name_a_folder_to_write_into(red_ball, tmp_path, capsys, monkeypatch):
    """Found by a hostile-input pass: `render --out views/` wrote views.png and views.gif beside the folder it
    named (Path() drops the /), and an existing folder, `--out .` included, was refused. A folder, existing or
    ending in /, now takes FILE.png and FILE.gif; a blank --out is refused."""
    args = ["render", str(red_ball), "--frames", "2", "--size", "16", "--device", "cpu"]
    assert main([*args, "--out", f"{tmp_path / 'views'}/"]) == 0
    assert f"wrote {tmp_path / 'views' / 'ball.png'} and {tmp_path / 'views' / 'ball.gif'}" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["ball.gif", "ball.png", "views"]
    (tmp_path / "sheets").mkdir()
    assert main([*args, "--out", str(tmp_path / "sheets")]) == 0
    assert sorted(p.name for p in (tmp_path / "sheets").iterdir()) == ["ball.gif", "ball.png"]
    monkeypatch.chdir(tmp_path)
    assert main([*args, "--out", "."]) == 0
    assert "wrote ball.png and ball.gif" in capsys.readouterr().out and (tmp_path / "ball.png").is_file()
    for blank in ("", " "):
        assert main([*args, "--out", blank]) == 2
        assert "--out is blank; give a file stem (--out views/scene writes views/scene.png and .gif), a folder " in (
            capsys.readouterr().err)  # fmt: skip


def test_version(capsys):
    import splatdreamer

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"splatdreamer {splatdreamer.__version__}\n"


def _help(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as info:
        main([*args, "--help"])
    assert info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # tyro wraps lines and draws boxes; words are what count


def test_generate_help_lists_the_starting_points_and_a_required_prompt(capsys):
    text = _help(capsys, "generate")
    assert "--preset {default,paper,fast,toy}" in text
    assert "--config {None}|PATH" in text
    assert re.search(r"--prompt STR .*?\(required\)", text)
    assert "wherever the flag stands" in text and "given after it" not in text
    assert "--viewer, --no-viewer" in text and "--viewer-port INT" in text and "--viewer-every INT" in text
    toy = _help(capsys, "generate", "--preset", "toy")
    assert "(default: 300)" in toy and "(default: toy)" in toy  # the preset's own defaults, and its name
    with pytest.raises(SystemExit) as info:
        main(["generate", "--steps", "5"])  # no prompt
    assert info.value.code == 2 and "--prompt" in capsys.readouterr().err


def test_convert_help_names_input_and_output(capsys):
    assert "splatdreamer convert [-h] INPUT OUTPUT" in _help(capsys, "convert")


def test_view_refuses_a_missing_file_and_a_bad_port(tmp_path, capsys):
    assert main(["view", str(tmp_path / "none.ply")]) == 2
    assert "none.ply does not exist" in capsys.readouterr().err
    assert main(["view", str(tmp_path), "--port", "70000"]) == 2
    assert "port" in capsys.readouterr().err


def test_convert_refuses_to_write_onto_its_input(red_ball, tmp_path, capsys):
    """Found by a hostile-input pass: `convert x.ply x.ply` replaced the input, dropping its extra properties."""
    import shutil

    copy = tmp_path / "copy.ply"
    shutil.copy(red_ball, copy)
    before = copy.read_bytes()
    assert main(["convert", str(copy), str(copy)]) == 2
    assert f"the output {copy} is the input file" in capsys.readouterr().err
    assert copy.read_bytes() == before


@pytest.mark.parametrize("flags", [["generate", "--config"], ["batch", "--out-dir", "unused", "--prompts-file"]])
def test_config_and_prompt_files_must_be_regular_files(tmp_path, capsys, flags):
    """Found by a hostile-input pass: /dev/zero as --config or --prompts-file was read until memory ran out."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big.txt"
    size = (64 << 20 if flags[0] == "batch" else 1 << 20) + 1
    with open(big, "wb") as f:
        f.truncate(size)  # sparse: the size is what is checked
    for path, kind in [("/dev/zero", "is a device, not a file"), (fifo, "is a FIFO, not a file"),
                       (tmp_path, "is a folder, not a file"), (big, f"is {size} bytes; more than {size - 1}")]:  # fmt: skip
        assert main([*flags, str(path)]) == 2
        assert f"{flags[-1]} {path} {kind}" in capsys.readouterr().err


def test_render_out_with_an_image_suffix_and_reading_a_splat_back(red_ball, tmp_path, capsys):
    """Found by a hostile-input pass: `render --out x.png` wrote x.png.png; a .splat given back to render was
    'not a PLY file (it starts with b'T\\x17...')'."""
    out = tmp_path / "x.png"
    assert main(["render", str(red_ball), "--out", str(out), "--size", "16", "--frames", "2", "--device", "cpu"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.gif", "x.png"]
    splat = tmp_path / "ball.splat"
    assert main(["convert", str(red_ball), str(splat)]) == 0
    capsys.readouterr()
    assert main(["render", str(splat), "--size", "16", "--frames", "2"]) == 2
    assert "a .splat file (an export for web viewers, without a header or SH); splatdreamer reads .ply" in (
        capsys.readouterr().err)  # fmt: skip


def test_convert_to_splat_says_when_it_leaves_the_view_dependent_colour_out(red_ball, tmp_path, capsys):
    """Found by a hostile-input pass: a degree-3 .ply became a .splat without a word about its lost SH."""
    from splatdreamer.splats import random_ball

    sh3 = tmp_path / "sh3.ply"
    save_ply(random_ball(64, sh_degree=3, generator=torch.Generator().manual_seed(0)), sh3)
    assert main(["convert", str(sh3), str(tmp_path / "sh3.splat")]) == 0
    assert "the view-dependent colour of SH degree 3 was left out" in capsys.readouterr().out
    assert (tmp_path / "sh3.splat").stat().st_size == 64 * 32
    assert main(["convert", str(red_ball), str(tmp_path / "ball.splat")]) == 0
    assert "note" not in capsys.readouterr().out  # degree 0: nothing is lost


def test_convert_names_the_properties_it_does_not_carry_over(red_ball, tmp_path, capsys):
    """Found by a hostile-input pass: a .ply with a property splatdreamer does not read (Mip-Splatting's
    filter_3D) lost it in conversion without a word."""
    import numpy as np
    from numpy.lib import recfunctions
    from plyfile import PlyData, PlyElement

    vertex = PlyData.read(str(red_ball))["vertex"].data
    extra = recfunctions.append_fields(vertex, "filter_3D", np.full(len(vertex), 0.01, "f4"), usemask=False)
    mip = tmp_path / "mip.ply"
    PlyData([PlyElement.describe(extra, "vertex")]).write(str(mip))
    assert main(["convert", str(mip), str(tmp_path / "out.ply")]) == 0
    out = capsys.readouterr().out
    assert f"note: {mip} also holds filter_3D, which splatdreamer does not read; {tmp_path / 'out.ply'} leaves it out" in out
    assert "filter_3D" not in {p.name for p in PlyData.read(str(tmp_path / "out.ply"))["vertex"].properties}


def test_convert_of_gaussians_too_large_for_splat_says_why(tmp_path, capsys):
    """Found by a hostile-input pass: a .ply whose finite scales overflow exp() was reported as 'a NaN or Inf
    ... The optimisation diverged', though the file is finite and convert optimises nothing."""
    from splatdreamer.splats import random_ball

    big = random_ball(8, generator=torch.Generator().manual_seed(0))
    big["scales"].data.fill_(1e30)
    save_ply(big, tmp_path / "big.ply")
    assert main(["convert", str(tmp_path / "big.ply"), str(tmp_path / "big.splat")]) == 2
    err = capsys.readouterr().err
    assert "all 8 Gaussians hold a NaN or Inf (of exp(scale) or the unit quaternion included)" in err
    assert "If they come from a run" in err and not (tmp_path / "big.splat").exists()
