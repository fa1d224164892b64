"""The `splatdreamer` command: generate, batch, view, render, convert, doctor, toy train, toy eval.

Every subcommand parses a dataclass with tyro, so each field's docstring is its `--help`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from splatdreamer import __version__, signals
from splatdreamer.config import MAX_RESOLUTION, Bound, GenerateConfig, check_fields, load_json
from splatdreamer.errors import ConfigError, SplatdreamerError
from splatdreamer.presets import PRESETS

USAGE = """usage: splatdreamer [--version] {generate,batch,view,render,convert,doctor,toy} ...

  generate   text to 3D Gaussian splats: splatdreamer generate --preset toy --prompt "a red ball"
  batch      many prompts and seeds on Ray: splatdreamer batch --prompts-file FILE --out-dir DIR
  view       web viewer of a .ply or a run folder: splatdreamer view runs/a_red_ball
  render     turntable PNG/GIF of any 3DGS .ply: splatdreamer render FILE.ply
  convert    .ply to .splat or SuperSplat's compressed .ply: splatdreamer convert IN.ply OUT.splat
  doctor     what this machine can do (CUDA, gsplat kernels, priors) and what to do next
  toy        the toy world: `splatdreamer toy train`, `splatdreamer toy eval`

`splatdreamer SUBCOMMAND --help` lists every flag."""


@dataclass
class RenderCommand:
    """Render a turntable of a 3DGS .ply: a contact sheet (.png) and an animated .gif beside it."""

    file: tyro.conf.Positional[Path]
    """The .ply to render (the standard 3DGS layout)."""
    out: Annotated[str | None, tyro.conf.arg(metavar="PATH")] = None
    """Output stem (views/scene writes views/scene.png and views/scene.gif), or a folder to write FILE.png and
    FILE.gif into: an existing one, or a path ending in / (made if missing); None = next to the file."""
    size: int = 256
    """Image size in pixels."""
    frames: int = 36
    """Turntable frames."""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Background RGB in [0, 1]."""
    backend: Literal["auto", "gsplat", "reference"] = "auto"
    """Rasterizer."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to render."""


RENDER_BOUNDS = {"size": Bound(0, MAX_RESOLUTION, open_low=True), "frames": Bound(0, 3600, open_low=True),
                 "background": Bound(0, 1)}  # fmt: skip


@dataclass
class ConvertCommand:
    """Convert a 3DGS .ply to another splat format."""

    input: Annotated[tyro.conf.Positional[Path], tyro.conf.arg(metavar="INPUT")]
    """The .ply to read."""
    output: Annotated[tyro.conf.Positional[Path], tyro.conf.arg(metavar="OUTPUT")]
    """Where to write: the suffix picks the format (.splat, .compressed.ply, .ply)."""


@dataclass
class ViewCommand:
    """Show a 3DGS .ply, or every particle of a run folder, in a web viewer (viser) until Ctrl-C."""

    path: tyro.conf.Positional[Path]
    """A .ply file, or a run folder (its particle_K.ply side by side, with a selector)."""
    port: int = 8080
    """Port to serve on (the next free one if it is taken)."""
    host: str = "127.0.0.1"
    """Address to listen on; 0.0.0.0 (or '') lets other machines on the network open the page."""


VIEW_BOUNDS = {"port": Bound(1, 65535)}


PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]


@dataclass
class LiveViewerOptions:
    """The live viewer of `splatdreamer generate`: a display, not part of the run's config.json."""

    viewer: bool = False
    """Show the run live in a web viewer (viser; pip install 'splatdreamer[viewer]')."""
    viewer_port: int = 8080
    """Port of the live viewer (the next free one if it is taken)."""
    viewer_every: int = 10
    """Steps between the viewer's updates of the particles (the step, losses and counts: up to 4 times a second)."""


VIEWER_BOUNDS = {"viewer_port": Bound(1, 65535), "viewer_every": Bound(1, None)}


@dataclass
class GenerateCommand:
    """`splatdreamer generate`: a GenerateConfig (its flags unprefixed), where it starts from, and the viewer."""

    run: Annotated[GenerateConfig, tyro.conf.arg(name="")]
    live: Annotated[LiveViewerOptions, tyro.conf.arg(name="")] = dataclasses.field(default_factory=LiveViewerOptions)
    preset: PresetName = "default"
    """Start from this named configuration (splatdreamer/presets.py); the other flags override its values."""
    config: Path | None = None
    """Start from a run's saved config.json instead of a preset; the other flags override its values."""


def _starting_config(args: list[str]) -> tuple[GenerateConfig, tuple[str, str] | None]:
    """The config `--preset NAME` / `--config FILE` name (wherever they stand), and (flag, value) if one was
    given. tyro parses them again later, for `--help` and their checks; the other flags' defaults come from here."""
    given: list[tuple[str, str]] = []
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if name in ("--preset", "--config"):
            if not eq:
                if i + 1 >= len(args):
                    raise ConfigError(f"{name} needs a value")
                value = args[i + 1]
            given.append((name, value))
    if len(given) > 1:
        raise ConfigError(f"give one starting point, not {' and '.join(n + ' ' + v for n, v in given)}: the "
                          "other flags override its values")  # fmt: skip
    if not given:
        return PRESETS["default"](), None
    name, value = given[0]
    if name == "--config":
        return load_json(Path(value)), given[0]
    if value not in PRESETS:
        raise ConfigError(f"unknown preset {value!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[value](), given[0]


def _refuse_blank_folder(args: list[str], flag: str, fix: str) -> None:
    """Refuse `FLAG ""` (an unset variable in `FLAG "$OUT"`): Path("") is ".", the current folder, where a run
    would write its files (or, with --output.overwrite, delete an earlier run's)."""
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if name.replace("_", "-") == flag and (eq or i + 1 < len(args)) and not (value if eq else args[i + 1]).strip():
            raise ConfigError(f"{flag} is blank, which would be the current folder; {fix}")


def _typed_fields(args: list[str]) -> set[str]:
    """The dotted names of the flags typed on the line: --seed is "seed", --vsd.cfg-scale=3 "vsd.cfg_scale",
    --output.no-overwrite "output.overwrite" (tyro has checked them; the non-config ones are never looked up)."""
    typed = set()
    for arg in args:
        if arg.startswith("--"):
            head, dot, last = arg[2:].partition("=")[0].replace("-", "_").rpartition(".")
            typed.add(head + dot + last.removeprefix("no_"))
    return typed


def cmd_generate(args: list[str]) -> None:
    from splatdreamer.generate import generate

    _refuse_blank_folder(args, "--output.out-dir", "give a folder, e.g. --output.out-dir runs/a_red_ball, or leave "
                         "it out for runs/<prompt>")  # fmt: skip
    _refuse_blank_folder(args, "--resume", "give the folder of an earlier run, e.g. --resume runs/a_red_ball")
    base, started_from = _starting_config(args)
    given = _typed_fields(args)  # a resumed run compares them with its config.json even where they equal the default
    if not base.prompt and "resume" not in given:
        base.prompt = tyro.MISSING  # shown as required; a resumed run takes its prompt from its config.json
    description = (
        "Text to 3D Gaussian splats with Variational Score Distillation.\n\n"
        "--preset NAME or --config FILE picks the starting configuration (default: the preset 'default'); "
        "every other flag overrides its value, wherever the flag stands on the line. The defaults shown "
        "below are those of the chosen starting configuration."
    )
    default = GenerateCommand(run=base)
    if started_from is not None:  # --help shows the starting point that was given as the default
        flag, value = started_from
        default = dataclasses.replace(default, **({"preset": value} if flag == "--preset" else {"config": Path(value)}))
    cmd = tyro.cli(GenerateCommand, args=args, default=default, prog="splatdreamer generate", description=description)
    check_fields(cmd.live, VIEWER_BOUNDS)  # cmd.run is checked by generate(), before anything is written
    config = cmd.run
    if config.resume is not None and started_from is not None:
        raise ConfigError("--resume continues a run with its own config.json; drop --preset / --config")
    if not cmd.live.viewer:
        generate(config, given=given)
        return
    from splatdreamer.viewer import LiveViewer

    live = LiveViewer(port=cmd.live.viewer_port, every=cmd.live.viewer_every)
    try:
        generate(config, callback=live, given=given)
        live.finish()
    except BaseException:
        live.close()
        raise
    _serve_until_interrupted(live.viewer)


@dataclass
class BatchOptions:
    """What `splatdreamer batch` adds to the generate flags: the prompts, the folder and the Ray cluster."""

    prompts_file: Path
    """One prompt per line (blank lines and # comments skipped), or a .jsonl file of
    {"prompt": ..., "seed": ..., "negative_prompt": ...} lines (seed and negative_prompt optional)."""
    out_dir: Path
    """The batch folder: a run folder per (prompt, seed), batch.jsonl (the manifest) and index.html (the gallery)."""
    seeds: tuple[int, ...] = (0,)
    """Seeds of every prompt (a JSONL line with its own seed runs once, at that seed)."""
    address: str | None = None
    """Ray cluster to join: auto (the cluster this machine belongs to) or ray://HOST:10001 (Ray Client);
    None = a local Ray instance on this machine."""
    gpus_per_run: float = 1.0
    """GPUs per run (0.5 = two runs share a GPU); where the cluster has no GPU, runs take CPU slots instead."""
    cpus_per_run: float = 1.0
    """CPU slots per run; a run on the CPU uses as many torch threads."""
    max_retries: int = 2
    """Times Ray starts a run again when its worker process dies; the new one continues from the checkpoint."""
    overwrite: bool = False
    """Replace run folders that hold a run with other settings (they are refused otherwise)."""
    num_cpus: int | None = None
    """CPU slots of the local Ray instance; None = every core. Not with --address."""


@dataclass
class BatchCommand:
    """`splatdreamer batch`: the batch's own flags and a GenerateConfig for every run (its flags unprefixed)."""

    batch: Annotated[BatchOptions, tyro.conf.arg(name="")]
    run: Annotated[GenerateConfig, tyro.conf.arg(name="")]
    preset: PresetName = "default"
    """Start from this named configuration (splatdreamer/presets.py); the other flags override its values."""
    config: Path | None = None
    """Start from a run's saved config.json instead of a preset; the other flags override its values."""


# generate flags that name one run, and what a batch has instead
BATCH_REPLACES = {"--prompt": "--prompts-file", "--seed": "--seeds", "--resume": "the same batch command again",
                  "--output.out-dir": "--out-dir", "--output.overwrite": "--overwrite"}  # fmt: skip


def cmd_batch(args: list[str]) -> int:
    from splatdreamer.batch import batch, read_prompts

    for arg in args:
        name = arg.partition("=")[0]
        if name in BATCH_REPLACES:
            raise ConfigError(f"{name} names one run; a batch takes {BATCH_REPLACES[name]} instead")
    _refuse_blank_folder(args, "--out-dir", "give a folder, e.g. --out-dir batches/first")
    base, started_from = _starting_config(args)
    description = (
        "Many generations as Ray tasks: every prompt of --prompts-file at every seed, each into its own "
        "folder of --out-dir, with a manifest (batch.jsonl) and a gallery (index.html). The same command "
        "again skips finished runs and continues interrupted ones. --preset NAME or --config FILE picks the "
        "starting configuration of every run; every other generate flag overrides its value."
    )
    default = BatchCommand(batch=BatchOptions(prompts_file=tyro.MISSING, out_dir=tyro.MISSING), run=base)
    if started_from is not None:
        flag, value = started_from
        default = dataclasses.replace(default, **({"preset": value} if flag == "--preset" else {"config": Path(value)}))
    cmd = tyro.cli(BatchCommand, args=args, default=default, prog="splatdreamer batch", description=description)
    opts = cmd.batch
    items = read_prompts(opts.prompts_file)
    entries = batch(
        items, cmd.run, opts.out_dir, seeds=opts.seeds, address=opts.address, gpus_per_run=opts.gpus_per_run,
        cpus_per_run=opts.cpus_per_run, max_retries=opts.max_retries, overwrite=opts.overwrite,
        num_cpus=opts.num_cpus,
    )  # fmt: skip
    return 1 if any(e.status != "done" for e in entries) else 0


def _serve_until_interrupted(viewer) -> None:
    """Print the page's address and keep serving it until Ctrl-C, then stop the server."""
    print(f"splatdreamer: viewer at {viewer.url} (Ctrl-C to stop){viewer.reach}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        viewer.close()


def cmd_view(args: list[str]) -> None:
    from splatdreamer.viewer import view

    cmd = tyro.cli(ViewCommand, args=args, prog="splatdreamer view")
    check_fields(cmd, VIEW_BOUNDS)
    _serve_until_interrupted(view(cmd.path, host=cmd.host, port=cmd.port))


def cmd_render(args: list[str]) -> None:
    from splatdreamer.generate import resolve_device
    from splatdreamer.io.ply import load_ply
    from splatdreamer.preview import write_previews
    from splatdreamer.render import resolve_backend

    cmd = tyro.cli(RenderCommand, args=args, prog="splatdreamer render")
    check_fields(cmd, RENDER_BOUNDS)  # before anything is read or written
    device = resolve_device(cmd.device)
    if cmd.out is not None and not cmd.out.strip():
        raise ConfigError("--out is blank; give a file stem (--out views/scene writes views/scene.png and .gif), a "
                          "folder (--out views/), or leave it out to write next to the file")  # fmt: skip
    splats = load_ply(cmd.file, requires_grad=False).to(device)
    if len(splats["means"]) == 0:
        raise ConfigError(f"{cmd.file} holds no Gaussians (its vertex count is 0); there is nothing to render")
    stem = cmd.file.with_suffix("")
    if cmd.out is not None:
        # Path() drops a trailing /, so a folder is told from a stem on the string
        folder = cmd.out.endswith(("/", os.sep)) or Path(cmd.out).is_dir()
        stem = Path(cmd.out) / stem.name if folder else Path(cmd.out)
    if stem.suffix.lower() in (".png", ".gif"):
        stem = stem.with_suffix("")  # --out x.png: x.png and x.gif, not x.png.png
    backend = resolve_backend(cmd.backend, device)
    with _writing(stem):
        sheet, gif = write_previews(splats, stem, cmd.size, cmd.frames, cmd.background, backend)
    print(f"wrote {sheet} and {gif}")
    blank = _blank_note(sheet, cmd.size, cmd.background, splats)
    if blank:
        print(blank)


def _blank_note(sheet: Path, size: int, background: tuple[float, float, float], splats) -> str | None:
    """A note when every view of the written sheet is the background alone (a hostile-input pass: a file whose
    Gaussians are all 1e30 wide gave blank images without a word), with what the file holds to say why."""
    import torch

    from splatdreamer.preview import sheet_is_background

    if not sheet_is_background(sheet, size, background):
        return None
    distance = splats["means"].norm(dim=-1).median().item()
    opacity = torch.sigmoid(splats["opacities"]).max().item()
    scale = splats["scales"].exp().max(dim=-1).values.median().item()
    return (
        f"splatdreamer: note: every view shows only the background. The views frame the unit sphere at the "
        f"origin, and this file's Gaussians lie at a median distance {distance:.3g} from it, are at most "
        f"{opacity:.3g} opaque, with a median largest scale {scale:.3g} (a toy particle of splatdreamer's: about "
        f"0.4, 0.99 and 0.03)."
    )


@contextlib.contextmanager
def _writing(path: Path):
    """An output that cannot be written (a parent that is a file, no permission, a full disk) is one clear
    error naming it, not a traceback from pathlib."""
    try:
        yield
    except OSError as e:
        from splatdreamer.io.files import blocking_file

        blocked = blocking_file(Path(path).parent)
        why = f"{blocked} is a file, not a folder" if blocked is not None else (e.strerror or str(e))
        raise ConfigError(f"cannot write {path}: {why}; choose another output") from None


def cmd_convert(args: list[str]) -> None:
    from splatdreamer.io.export import export, format_from_path
    from splatdreamer.io.ply import load_ply, unused_properties

    cmd = tyro.cli(ConvertCommand, args=args, prog="splatdreamer convert")
    if cmd.output.is_dir():
        raise ConfigError(f"the output {cmd.output} is a folder; give a file name such as {cmd.output / 'out.splat'}")
    if cmd.output.exists() and cmd.input.exists() and cmd.output.samefile(cmd.input):
        raise ConfigError(f"the output {cmd.output} is the input file; converting onto it would replace it with "
                          "what the output format keeps; choose another name")  # fmt: skip
    splats = load_ply(cmd.input, requires_grad=False)
    fmt = format_from_path(cmd.output)
    if len(splats["means"]) == 0:  # a .splat of none is an empty file, which no viewer (nor `render`) reads back
        raise ConfigError(f"{cmd.input} holds no Gaussians (its vertex count is 0); there is nothing to convert")
    with _writing(cmd.output):
        export(splats, cmd.output, fmt)
    print(f"wrote {cmd.output}")
    if fmt == "splat" and splats["shN"].shape[1] > 0:
        degree = round((splats["shN"].shape[1] + 1) ** 0.5) - 1
        print(f"splatdreamer: note: .splat stores no spherical harmonics; the view-dependent colour of SH degree "
              f"{degree} was left out (only the base colour is kept). .ply and .compressed.ply keep it.")  # fmt: skip
    unused = unused_properties(cmd.input)
    if unused:
        print(f"splatdreamer: note: {cmd.input} also holds {', '.join(unused)}, which splatdreamer does not read; "
              f"{cmd.output} leaves {'it' if len(unused) == 1 else 'them'} out.")  # fmt: skip


def cmd_doctor(args: list[str]) -> None:
    from splatdreamer.doctor import doctor

    tyro.cli(lambda: None, args=args, prog="splatdreamer doctor", description="What this machine can do.")
    doctor()


TOY_USAGE = """usage: splatdreamer toy {train,eval} [--help]

The toy world: a small prior trained in-repo, and the evaluation of VSD and SDS on it.

  train   train a toy prior (splatdreamer toy train --help)
  eval    run VSD and SDS on the toy prompts over seeds, and score them (splatdreamer toy eval --help)"""


def cmd_toy(args: list[str]) -> None:
    if args and args[0] in ("-h", "--help"):
        print(TOY_USAGE)
        return
    if not args or args[0] not in ("train", "eval"):
        what = f"unknown toy command {args[0]!r}" if args else "a toy command is missing"
        raise ConfigError(f"{what}; {TOY_USAGE.splitlines()[0]}")
    if args[0] == "train":
        from splatdreamer.toy.train import ToyTrainConfig, train

        train(tyro.cli(ToyTrainConfig, args=args[1:], prog="splatdreamer toy train"))
    else:
        from splatdreamer.toy.evaluate import ToyEvalConfig, evaluate

        evaluate(tyro.cli(ToyEvalConfig, args=args[1:], prog="splatdreamer toy eval"))


COMMANDS = {
    "generate": cmd_generate,
    "batch": cmd_batch,
    "view": cmd_view,
    "render": cmd_render,
    "convert": cmd_convert,
    "doctor": cmd_doctor,
    "toy": cmd_toy,
}


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM and SIGHUP raise KeyboardInterrupt, as Ctrl-C does, for the length of a command: `batch` then
    cancels its runs (each saves a checkpoint) and writes its manifest instead of dying with runs marked
    running; `generate` takes them between steps itself (`signals.STOP_SIGNALS`)."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")

    with signals.handled(signals.TERMINATION_SIGNALS, handler):
        yield


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:  # `splatdreamer generate --help | head`: the reader left; stop quietly, as cat does
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit-time flush cannot fail
        return 141  # 128 + SIGPIPE, the status a shell gives a writer that a closed pipe stopped


def _main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(f"splatdreamer {__version__}")
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"splatdreamer: unknown command {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    try:
        with _terminate_as_interrupt():
            code = command(argv[1:])  # None, or a command's own status (batch: 1 when a run failed)
    except SplatdreamerError as e:
        print(f"splatdreamer: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        # generate() says what was saved (a checkpoint, or none); a bare interrupt claims nothing.
        note = f"; {e.args[0]}" if e.args else ""
        print(f"\nsplatdreamer: interrupted{note}", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
