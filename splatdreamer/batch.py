"""Many generations: each (prompt, seed) is one Ray task that runs `generate()` into its own folder.

    splatdreamer batch --prompts-file prompts.txt --seeds 0 1 --preset toy --out-dir batches/first

This process (the driver) plans the runs, submits a Ray task for each run that is not finished, and keeps two
files in the batch folder up to date, each written whole and renamed into place: `batch.jsonl`, the manifest
(one line per run: status, error, seconds, node, files), and `index.html`, the gallery. A run folder belongs to
its run: a task that finds the config.json of an earlier attempt with the same settings continues from that
attempt's checkpoint. That one rule is what makes Ray's retry after a dead worker, and the same command run
again after Ctrl-C, continue where they stopped.

Ray is an optional extra (`pip install "splatdreamer[ray]"`): it is imported only when a batch starts.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import html
import json
import logging
import math
import os
import signal
import socket
import threading
import time
import traceback
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

try:
    import resource  # Unix only; elsewhere there is no address-space limit to size the store to
except ImportError:  # pragma: no cover
    resource = None

from tqdm.auto import tqdm

from splatdreamer.config import (
    BOUNDS, SLUG_LENGTH, GenerateConfig, changed_fields, check_type, get_field, load_json, prompt_slug,
    read_text_file,
)  # fmt: skip
from splatdreamer.errors import BackendUnavailableError, ConfigError, RunFolderError, SplatdreamerError
from splatdreamer.generate import CONFIG, Progress, generate
from splatdreamer.io.atomic import atomic_write
from splatdreamer.io.lock import RunLock

MANIFEST = "batch.jsonl"
GALLERY = "index.html"
_GALLERY_TITLE = "<title>splatdreamer batch</title>"  # how a batch knows its own gallery
RAY_MISSING = 'splatdreamer batch runs on Ray, which is not installed; install it with: pip install "splatdreamer[ray]"'
# Settings a run's folder may differ in from the batch's without being another run.
_PLACE = ("output.out_dir", "output.overwrite", "resume")
_JSON_KEYS = {"prompt", "seed", "negative_prompt"}


@dataclass
class BatchItem:
    """One prompt of a batch, with the settings a JSONL line may give it."""

    prompt: str
    seed: int | None = None  # None = each of the batch's seeds
    negative_prompt: str | None = None  # None = the config's
    source: str = ""  # where it was written ("prompts.jsonl:3"), for messages


@dataclass
class RunEntry:
    """One run's line in the manifest (`batch.jsonl`); paths are relative to the batch folder."""

    name: str  # the run's folder: <prompt-slug>-s<seed>
    prompt: str
    seed: int
    negative_prompt: str
    status: str = "pending"  # pending, running, done or failed
    error: str | None = None  # why it failed
    seconds: float | None = None  # of the task that finished it
    node: str | None = None  # host of its latest task
    pid: int | None = None  # worker process of its latest task
    attempts: int = 0  # tasks started for it, Ray's retries and later batches included
    resumed_from: int | None = None  # the step its latest task started from (0: the beginning)
    queued_seconds: float | None = None  # submission -> the task starting in a worker (Ray's share)
    startup_seconds: float | None = None  # submission -> the start of the first step (Ray's and loading the run)
    files: list[str] = field(default_factory=list)  # every exported file (.ply first)
    previews: list[str] = field(default_factory=list)  # contact sheet per particle
    turntables: list[str] = field(default_factory=list)  # turntable GIF per particle


# ---------------------------------------------------------------- prompts and plan


def read_prompts(path: Path) -> list[BatchItem]:
    """The prompts of a file: one per line (blank lines and `# comments` skipped), or for a `.jsonl` file one
    JSON object per line: `{"prompt": ..., "seed": ..., "negative_prompt": ...}` (seed and negative_prompt
    optional). `ConfigError` naming the file and line for anything else."""
    path = Path(path)
    try:
        text = read_text_file(path, "--prompts-file", 64 << 20)
    except FileNotFoundError:
        raise ConfigError(f"--prompts-file {path} does not exist; give a text file with one prompt per line "
                          "(or a .jsonl file of {\"prompt\": ...} lines)") from None  # fmt: skip
    except UnicodeDecodeError:
        raise ConfigError(f"--prompts-file {path} is not UTF-8 text; save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"cannot read --prompts-file {path} ({e.strerror}); give a readable text file") from None
    items = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        source = f"{path}:{number}"
        items.append(_json_item(line, source) if path.suffix == ".jsonl" else BatchItem(line, source=source))
    if not items:
        raise ConfigError(f"--prompts-file {path} holds no prompts (blank lines and # comments are skipped); "
                          "write one prompt per line")  # fmt: skip
    return items


def _json_item(line: str, source: str) -> BatchItem:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{source} is not JSON ({e.msg}); write one object per line, e.g. "
                          '{"prompt": "a red ball", "seed": 1}') from None  # fmt: skip
    if not isinstance(data, dict) or "prompt" not in data:
        raise ConfigError(f'{source} must be an object with a "prompt", e.g. {{"prompt": "a red ball"}}')
    unknown = sorted(set(data) - _JSON_KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown keys {unknown}; a line may give {sorted(_JSON_KEYS)}")
    prompt, seed, negative = data["prompt"], data.get("seed"), data.get("negative_prompt")
    if not isinstance(prompt, str):
        raise ConfigError(f'{source}: "prompt" must be a string, got {prompt!r:.60}')
    if seed is not None and not _is_seed(seed):
        raise ConfigError(f'{source}: "seed" must be a whole number {BOUNDS["seed"].describe()}, got {seed!r:.60}')
    if negative is not None and not isinstance(negative, str):
        raise ConfigError(f'{source}: "negative_prompt" must be a string, got {negative!r:.60}')
    return BatchItem(prompt, seed, negative, source)


def _is_seed(value) -> bool:
    """A whole number in generate's seed range (bool, though an int, is not one)."""
    return not isinstance(value, bool) and isinstance(value, int) and value in BOUNDS["seed"]


def plan(items: Sequence[BatchItem], seeds: Sequence[int], config: GenerateConfig, out_dir: Path) -> list[GenerateConfig]:
    """One config per run: each item at its own seed or at every seed, in its folder `out_dir/<slug>-s<seed>`.

    The settings every run shares, and each item's fields (their types, a blank prompt, the seed's range), are
    checked here (`ConfigError` naming the line, or `prompts[i] ('its prompt')` for an item without one, before
    anything runs); what only a run's task can find, such as a NaN, fails that run alone."""
    if not seeds:
        raise ConfigError("--seeds is empty; give at least one, e.g. --seeds 0")
    for seed in seeds:
        if not _is_seed(seed):
            raise ConfigError(f"--seeds must be whole numbers {BOUNDS['seed'].describe()}, got {seed!r}")
    repeated = sorted({seed for seed in seeds if list(seeds).count(seed) > 1})
    if repeated:
        raise ConfigError(f"--seeds names {', '.join(map(str, repeated))} more than once; give each seed once")
    dataclasses.replace(config, prompt="-", resume=None).validate()
    hints = typing.get_type_hints(BatchItem)
    configs, seen = [], {}
    for i, item in enumerate(items):
        where = item.source or f"prompts[{i}] ({item.prompt!r:.60})"
        for f in dataclasses.fields(item):  # a Python caller's BatchItem(prompt=3) would fail deep below
            check_type(hints[f.name], getattr(item, f.name), f"{where}: BatchItem.{f.name}")
        if not item.prompt.strip():
            raise ConfigError(f"{where}: the prompt is blank; write one there, e.g. a red ball, or leave the line out")
        if item.seed is not None and not _is_seed(item.seed):
            raise ConfigError(f"{where}: the seed must be a whole number {BOUNDS['seed'].describe()}, got "
                              f"{item.seed!r:.60}")  # fmt: skip
        for seed in [item.seed] if item.seed is not None else seeds:
            run = copy.deepcopy(config)
            run.prompt, run.seed, run.resume = item.prompt, seed, None
            if item.negative_prompt is not None:
                run.negative_prompt = item.negative_prompt
            name = f"{prompt_slug(item.prompt)}-s{seed}"
            if name in seen:
                first_where, first = seen[name]
                raise _same_run(f"{first_where} and {where} both make the run {name}", first, item)
            seen[name] = (where, item)
            run.output.out_dir, run.output.overwrite = Path(out_dir) / name, False
            configs.append(run)
    return configs


def _same_run(both: str, first: BatchItem, second: BatchItem) -> ConfigError:
    """Why two items make one run folder (`both` says which and which folder): prompts that differ only after the
    folder name's cut, the same prompt, or prompts that differ only in what a folder name leaves out (case,
    punctuation, spaces)."""
    if prompt_slug(first.prompt, None) != prompt_slug(second.prompt, None):
        return ConfigError(f"{both}: a run folder's name keeps the first {SLUG_LENGTH} characters of the prompt, and "
                           "these prompts differ only after that; make them differ earlier, e.g. by putting the "
                           "words that tell them apart first")  # fmt: skip
    if first.prompt == second.prompt:
        return ConfigError(f"{both}: the same prompt at the same seed; leave one out, or give them different seeds")
    return ConfigError(f"{both}: a run folder's name keeps only the prompt's letters and digits, lower-cased; give "
                       "them different prompts or seeds")  # fmt: skip


def continue_or_start(config: GenerateConfig, overwrite: bool) -> GenerateConfig:
    """The config that makes `generate` do this run's remaining work: a resume of the run its folder holds
    when that run has these settings, a new run when the folder holds none (or, with `overwrite`, another
    one); `ConfigError` naming the differences otherwise."""
    run_dir = Path(config.output.out_dir)
    if not (run_dir / CONFIG).is_file():
        return config
    saved = load_json(run_dir / CONFIG)
    differ = [n for n in changed_fields(saved, config) if n not in _PLACE]
    if not differ:
        return GenerateConfig(resume=run_dir)
    if overwrite:
        return dataclasses.replace(config, output=dataclasses.replace(config.output, overwrite=True))
    shown = ", ".join(f"--{n.replace('_', '-')} {get_field(saved, n)!r} there, {get_field(config, n)!r} now" for n in differ[:3])
    raise ConfigError(f"{run_dir} holds a run with other settings ({shown}{', ...' if len(differ) > 3 else ''}); "
                      "pass --overwrite to replace it, or choose another --out-dir")  # fmt: skip


# ---------------------------------------------------------------- the task (in a Ray worker)


def run_task(config: GenerateConfig, overwrite: bool, events=None, cpu_threads: int | None = None) -> dict:
    """One run, in a Ray worker: `generate` into its folder, continuing an earlier attempt's checkpoint.

    Posts ("started", name, {...}) and ("first_step", name, {...}) to `events` (a `ray.util.queue.Queue`).
    Returns the outcome as a dict; a run's own failure is returned, not raised, so Ray retries only a task
    whose worker died. `cpu_threads`: torch threads for a run on CPU slots (its share of the machine).
    """
    import torch

    if cpu_threads:
        torch.set_num_threads(cpu_threads)
    run_dir = Path(config.output.out_dir)

    def post(kind: str, **info) -> None:
        if events is not None:  # posted without waiting: a task blocked on Ray gives its CPU slot to another
            events.actor.put_nowait.remote((kind, run_dir.name, info))

    post("started", pid=os.getpid(), node=socket.gethostname(), time=time.time())
    start = time.perf_counter()
    reported = False

    def callback(progress: Progress) -> None:
        nonlocal reported
        if not reported:  # this task's first step: the loop began `progress.seconds` ago
            reported = True
            post("first_step", resumed_from=progress.step - 1, time=time.time() - progress.seconds)

    try:
        result = generate(continue_or_start(config, overwrite), callback)
    except SplatdreamerError as e:
        return {"status": "failed", "error": str(e)}
    except Exception as e:  # a bug: the traceback goes to the worker's log, and the run fails alone
        traceback.print_exc()
        return {"status": "failed", "error": f"{type(e).__name__}: {e}"}

    def rel(paths: list[Path]) -> list[str]:
        return [f"{run_dir.name}/{p.name}" for p in paths]

    return {"status": "done", "seconds": time.perf_counter() - start, "files": rel(result.files + result.extra_files),
            "previews": rel(result.previews), "turntables": rel(result.turntables)}  # fmt: skip


# ---------------------------------------------------------------- manifest and gallery


def read_manifest(out_dir: Path) -> dict[str, RunEntry]:
    """The entries of `out_dir/batch.jsonl` by run name; {} when there is none. Every value is checked against
    its field's type: a hand edit such as `"files": "abc"` would otherwise fail later with a TypeError, or be
    written back as it is. Paths must stay inside the batch folder: they are checked with is_file() and linked
    from the gallery, so `../../etc/passwd`, an absolute path, or one that a symbolic link leads out is refused."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return {}
    root = Path(os.path.realpath(out_dir))
    hints = typing.get_type_hints(RunEntry)
    entries = {}
    try:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                entry = RunEntry(**{k: v for k, v in json.loads(line).items() if k in hints})
                for name, hint in hints.items():
                    check_type(hint, getattr(entry, name), f'line {number}: "{name}"')
                for name in ("files", "previews", "turntables"):
                    for i, file in enumerate(getattr(entry, name)):
                        if Path(file).anchor or ".." in Path(file).parts:
                            raise ConfigError(f'line {number}: "{name}"[{i}] must be a relative path inside the '
                                              "batch folder (RUN/FILE, without .. or a leading /), got "
                                              f"{file!r:.80}")  # fmt: skip
                        target = Path(os.path.realpath(root / file))  # Path.resolve raises on a loop of links
                        if not target.is_relative_to(root):
                            raise ConfigError(f'line {number}: "{name}"[{i}] must lie inside the batch folder, but '
                                              f"{file!r:.80} leads to {target} through a symbolic link")  # fmt: skip
                entries[entry.name] = entry
    except (OSError, ValueError, TypeError, AttributeError) as e:
        why = str(e) if isinstance(e, ConfigError) else f"{type(e).__name__}: {e}"
        raise ConfigError(f"the manifest {path} cannot be read ({why}); correct it, or delete it, and the batch "
                          "runs again, continuing each run folder from its checkpoint") from None  # fmt: skip
    return entries


def write_manifest(out_dir: Path, entries: Sequence[RunEntry]) -> None:
    with atomic_write(Path(out_dir) / MANIFEST, "w") as f:
        f.writelines(json.dumps(dataclasses.asdict(entry)) + "\n" for entry in entries)


def write_gallery(out_dir: Path, entries: Sequence[RunEntry]) -> None:
    """`out_dir/index.html`: a card per run with its turntables, contact sheets, prompt, seed, time and its
    files. Every link is relative, so the page works from disk and from any static server."""

    def link(path: str) -> str:
        return html.escape(quote(path), quote=True)

    cards = []
    for e in entries:
        if e.status == "done":
            state = f"{e.seconds:.0f} s" if e.seconds is not None else "done"
        else:
            state = e.status + (f": {e.error}" if e.error else "")
        pictures = "".join(f'<a href="{link(s)}"><img src="{link(t)}" alt="turntable of {link(t)}"></a>'
                           for t, s in zip(e.turntables, e.previews))  # fmt: skip
        sheets = "".join(f'<img class="sheet" src="{link(s)}" alt="views of {link(s)}">' for s in e.previews)
        files = " ".join(f'<a href="{link(f)}">{html.escape(Path(f).name)}</a>' for f in e.files)
        cards.append(
            f'<div class="card {e.status}"><div class="pictures">{pictures}</div>{sheets}'
            f"<h2>{html.escape(e.prompt) or '(empty prompt)'}</h2>"
            f"<p>seed {e.seed} &middot; {html.escape(state)}</p><p>{files}</p></div>"
        )
    done = sum(e.status == "done" for e in entries)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8">{_GALLERY_TITLE}
<style>
body {{ font-family: sans-serif; margin: 1.5em; background: #f4f4f4; }}
.cards {{ display: flex; flex-wrap: wrap; gap: 1em; }}
.card {{ background: white; padding: .8em; border-radius: 6px; max-width: 420px; }}
.card.failed {{ border-left: 4px solid #c33; }}
.card img {{ width: 96px; height: 96px; image-rendering: pixelated; }}
.card img.sheet {{ width: 100%; height: auto; }}
h2 {{ font-size: 1.05em; margin: .4em 0 .2em; }} p {{ margin: .2em 0; font-size: .9em; }}
</style></head>
<body><h1>splatdreamer batch: {done} of {len(entries)} runs done</h1>
<div class="cards">
{chr(10).join(cards)}
</div></body></html>
"""
    with atomic_write(Path(out_dir) / GALLERY, "w") as f:
        f.write(page)


# ---------------------------------------------------------------- the driver


def batch(
    prompts: Sequence[str | BatchItem],
    config: GenerateConfig,
    out_dir: str | os.PathLike,
    *,
    seeds: Sequence[int] = (0,),
    address: str | None = None,
    gpus_per_run: float = 1.0,
    cpus_per_run: float = 1.0,
    max_retries: int = 2,
    overwrite: bool = False,
    num_cpus: int | None = None,
) -> list[RunEntry]:
    """Run `config` for every prompt at every seed (a `BatchItem` may give its own), one Ray task per run, into
    `out_dir/<prompt-slug>-s<seed>/`; returns the manifest's entries, which are also in `out_dir/batch.jsonl`.

    address: None = a local Ray instance on this machine (`num_cpus` slots; None = all cores), "auto" or
    "ray://HOST:10001" = an existing cluster (a Ray instance this process already started is used as it is).
    Each run takes `gpus_per_run` GPUs (fractions share one), or, where the cluster has no GPU, `cpus_per_run`
    CPU slots and as many torch threads. Ray starts a run again up to `max_retries` times when its worker dies;
    the new task continues from the run's checkpoint. Finished runs are skipped and interrupted ones continued,
    so calling this again after a stop finishes the batch. A run folder that holds a run with other settings is
    refused (`ConfigError`) unless `overwrite`. Ctrl-C cancels the tasks (each saves a checkpoint), writes the
    manifest and raises KeyboardInterrupt. A run that fails is marked failed with its error; the others go on.
    """
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise ConfigError(f"prompts must be a list of prompts (str or BatchItem), got {type(prompts).__name__}: "
                          "write [\"a red ball\"] for one")  # fmt: skip
    for p in prompts:
        if not isinstance(p, (str, BatchItem)):
            raise ConfigError(f"prompts must be str or BatchItem, got {type(p).__name__}: {p!r:.60}")
    if not isinstance(config, GenerateConfig):
        raise ConfigError(f"batch() takes a GenerateConfig, got {type(config).__name__}; start from a preset, "
                          "e.g. splatdreamer.presets.toy()")  # fmt: skip
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence):
        raise ConfigError(f"seeds must be a list of whole numbers, got {seeds!r:.60}; write [{seeds!r:.20}] for one")
    ray = _import_ray()
    items = [p if isinstance(p, BatchItem) else BatchItem(p) for p in prompts]
    if not items:
        raise ConfigError("the batch has no prompts; give at least one")
    _check_options(address, gpus_per_run, cpus_per_run, max_retries, num_cpus)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise RunFolderError(f"--out-dir {out_dir} is a file; choose a folder")
    _check_foreign_files(out_dir)
    runs = plan(items, seeds, config, out_dir)
    entries, todo = _merge_with_manifest(runs, read_manifest(out_dir), overwrite)
    # Ray starts, and the requests are checked against its nodes, before the folder is made: a batch that Ray
    # refuses (an unreachable --address, more --cpus-per-run than a node has) leaves nothing behind.
    started_ray = bool(todo) and not ray.is_initialized()  # nothing to do: no Ray
    if started_ray:
        _init_ray(ray, address, num_cpus)
    try:
        gpus, threads = _resources(ray, gpus_per_run, cpus_per_run) if todo else (0, None)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunFolderError(f"cannot create --out-dir {out_dir} ({e.strerror}); choose a folder you can write "
                                 "to") from None  # fmt: skip
        with RunLock(out_dir):  # one batch per folder; its runs lock their own folders
            driver = _Driver(ray, out_dir, entries, overwrite, max_retries)
            driver.save()
            driver.run(todo, cpus_per_run, gpus, threads)
    finally:
        if started_ray:
            ray.shutdown()
    return entries


def _check_foreign_files(out_dir: Path) -> None:
    """Refuse a folder without a manifest that holds files a batch did not write: the gallery would replace
    an `index.html` of the user's. Run folders (with a config.json), our own gallery and hidden files are
    a batch's or harmless (a batch whose manifest was deleted continues)."""
    if not out_dir.is_dir() or (out_dir / MANIFEST).exists():
        return

    def ours(entry: Path) -> bool:
        if entry.name.startswith("."):
            return True
        if entry.is_dir():
            return (entry / CONFIG).is_file()
        if entry.name == GALLERY:
            with contextlib.suppress(OSError, UnicodeDecodeError):
                return _GALLERY_TITLE in entry.read_text(encoding="utf-8")[:1000]
        return False

    foreign = sorted(e.name for e in out_dir.iterdir() if not ours(e))
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise RunFolderError(f"--out-dir {out_dir} holds files that are not a batch's ({shown}); a batch writes its "
                             f"{GALLERY} and {MANIFEST} there, so choose a new or empty folder")  # fmt: skip


def _import_ray():
    try:
        import ray
    except ImportError:
        raise BackendUnavailableError(RAY_MISSING) from None
    return ray


def _check_options(address, gpus_per_run, cpus_per_run, max_retries, num_cpus) -> None:
    for flag, value, ok, what in [
        ("--gpus-per-run", gpus_per_run, lambda v: v >= 0, ">= 0"),
        ("--cpus-per-run", cpus_per_run, lambda v: v > 0, "positive"),
        ("--max-retries", max_retries, lambda v: v >= 0, ">= 0"),
    ]:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
            raise ConfigError(f"{flag} must be {what}, got {value!r}")
    if num_cpus is not None and (isinstance(num_cpus, bool) or not isinstance(num_cpus, int) or num_cpus < 1):
        raise ConfigError(f"--num-cpus must be a positive whole number, got {num_cpus!r}")
    if num_cpus is not None and address is not None:
        raise ConfigError("--num-cpus sizes the local Ray instance; a cluster (--address) has its own slots: drop one")


def _merge_with_manifest(runs, old: dict[str, RunEntry], overwrite: bool):
    """Entries for the planned runs, finished ones from the old manifest, and the (entry, config) still to run.
    A finished run counts only if its folder still holds it with these settings and all its files."""
    entries, todo, refused = [], [], []
    for run in runs:
        name = Path(run.output.out_dir).name
        entry = RunEntry(name, run.prompt, run.seed, run.negative_prompt)
        try:
            resumes = continue_or_start(run, overwrite).resume is not None
        except ConfigError as e:
            refused.append(str(e))
            continue
        previous = old.get(name)
        if previous is not None:
            entry.attempts = previous.attempts
            out_dir = Path(run.output.out_dir).parent
            files = previous.files + previous.previews + previous.turntables
            if previous.status == "done" and resumes and previous.files and all((out_dir / f).is_file() for f in files):
                entry = previous
        entries.append(entry)
        if entry.status != "done":
            entry.status, entry.error = "pending", None
            todo.append((entry, run))
    if refused:
        more = f" (and {len(refused) - 1} more run folders like it)" if len(refused) > 1 else ""
        raise ConfigError(refused[0] + more)
    return entries, todo


# Ray's own floor for an object store (ray_constants.OBJECT_STORE_MINIMUM_MEMORY_BYTES is 75 MiB), with room.
_MIN_OBJECT_STORE = 100 * 1024**2


def _object_store_bytes() -> int | None:
    """The local object store's size when this process's address space is limited (`ulimit -v`), else None.

    Ray sizes the store at 30 % of the machine's memory and maps all of it into every worker; under an
    address-space limit that map fails, each worker dies as it starts and Ray starts another, so a batch waited
    forever without a word. An eighth of the limit leaves the rest for torch; the runs pass only small results
    through the store. Ray's own RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES, when set, is left to decide."""
    if resource is None or "RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES" in os.environ:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    return max(soft // 8, _MIN_OBJECT_STORE)


def _init_ray(ray, address: str | None, num_cpus: int | None) -> None:
    local = {"num_cpus": num_cpus, "include_dashboard": False} if address is None else {}
    if address is None and (store := _object_store_bytes()) is not None:
        local["object_store_memory"] = store
    main_thread = threading.current_thread() is threading.main_thread()
    on_term = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, **local)
        if callable(on_term):
            # ray.init puts in its own SIGTERM handler, which exits at once; the CLI's turns SIGTERM into an
            # interrupt, on which the driver cancels the runs (each saves a checkpoint) and writes the manifest.
            signal.signal(signal.SIGTERM, on_term)
    except Exception as e:  # Ray raises ConnectionError, RuntimeError or ValueError for an address it cannot use
        first = (str(e).strip().splitlines() or [""])[0][:200]
        where = f"the Ray cluster at --address {address}" if address else "a local Ray instance"
        raise BackendUnavailableError(
            f"cannot start or reach {where} ({type(e).__name__}: {first}); start the cluster first "
            "(ray start --head on its head node), or leave --address out to run on this machine"
        ) from None


def _resources(ray, gpus_per_run: float, cpus_per_run: float) -> tuple[float, int | None]:
    """GPUs per task and, for CPU runs, torch threads per task; refuses requests no node can meet."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    most_gpus = max((r.get("GPU", 0) for r in nodes), default=0)
    most_cpus = max((r.get("CPU", 0) for r in nodes), default=0)
    if cpus_per_run > most_cpus:
        raise BackendUnavailableError(f"--cpus-per-run {cpus_per_run:g}: no Ray node has that many CPU slots "
                                      f"(the largest has {most_cpus:g}); ask for at most {most_cpus:g}")  # fmt: skip
    if gpus_per_run and not most_gpus:
        tqdm.write(f"splatdreamer: no GPU in the Ray cluster; each run takes {cpus_per_run:g} CPU slot(s) and "
                   "runs on the CPU")  # fmt: skip
        return 0, max(1, int(cpus_per_run))
    if gpus_per_run > most_gpus:
        raise BackendUnavailableError(f"--gpus-per-run {gpus_per_run:g}: no Ray node has that many GPUs (the "
                                      f"largest has {most_gpus:g}); ask for at most {most_gpus:g}")  # fmt: skip
    return gpus_per_run, None if gpus_per_run else max(1, int(cpus_per_run))


class _Driver:
    """Submits the tasks and keeps the manifest, the gallery and the progress bar in step with them."""

    def __init__(self, ray, out_dir: Path, entries: list[RunEntry], overwrite: bool, max_retries: int) -> None:
        self.ray, self.out_dir, self.entries = ray, out_dir, entries
        self.overwrite, self.max_retries = overwrite, max_retries
        self.by_name = {e.name: e for e in entries}
        self.submitted: dict[str, float] = {}

    def save(self) -> None:
        write_manifest(self.out_dir, self.entries)
        write_gallery(self.out_dir, self.entries)

    def count(self, status: str) -> int:
        return sum(e.status == status for e in self.entries)

    def run(self, todo: list[tuple[RunEntry, GenerateConfig]], cpus_per_run: float, gpus: float,
            threads: int | None) -> None:
        """Run `todo`, each task on `cpus_per_run` CPU slots and `gpus` GPUs with `threads` torch threads
        (`_resources`)."""
        ray = self.ray
        from ray.util.queue import Queue

        self.bar = tqdm(total=len(self.entries), initial=len(self.entries) - len(todo), desc="batch", unit="run",
                        dynamic_ncols=True)  # fmt: skip
        start = time.perf_counter()
        in_flight = {}
        try:
            if todo:
                self.events = Queue()
                task = ray.remote(run_task)
                options = {"num_cpus": cpus_per_run, "num_gpus": gpus, "max_retries": self.max_retries,
                           "retry_exceptions": False}  # fmt: skip
                # One submission time for the batch, taken before any task can start: every run's queued_seconds
                # counts from the same moment, so the manifest's spans line up, and none is negative. Taken after
                # each .remote(), a later run's wait counted from a later moment, and on a loaded machine the
                # third run of two slots seemed to start 3 ms before the first had ended.
                submitted = time.time()
                for entry, run in todo:
                    self.submitted[entry.name] = submitted
                    entry.queued_seconds = entry.startup_seconds = None
                    ref = task.options(name=f"splatdreamer {entry.name}", **options).remote(
                        run, self.overwrite, self.events, threads
                    )
                    in_flight[ref] = entry
            self._show()
            while in_flight:
                ready, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=0.5, fetch_local=False)
                changed = self._drain()
                for ref in ready:
                    self._finish(ref, in_flight.pop(ref))
                    changed = True
                if changed:
                    self._show()
                    self.save()
        except KeyboardInterrupt:
            stopped = len(in_flight)
            self._stop(in_flight)
            raise KeyboardInterrupt(
                f"{stopped} run(s) stopped, each with the checkpoint it reached; the manifest "
                f"{self.out_dir / MANIFEST} says which. Run the same command again to continue them"
            ) from None
        finally:
            self.bar.close()
        self._summary(time.perf_counter() - start)

    def _drain(self) -> bool:
        """Apply the tasks' events (a task started, a task's first step) to the entries."""
        from ray.util.queue import Empty

        try:
            events = self.events.get_nowait_batch(self.events.qsize())
        except Empty:
            return False
        for kind, name, info in events:
            entry = self.by_name[name]
            if kind == "started":
                entry.status, entry.pid, entry.node = "running", info["pid"], info["node"]
                entry.attempts += 1
                entry.resumed_from = None
                if entry.queued_seconds is None:
                    entry.queued_seconds = info["time"] - self.submitted[name]
            else:
                entry.resumed_from = info["resumed_from"]
                if entry.startup_seconds is None:
                    entry.startup_seconds = info["time"] - self.submitted[name]
        return bool(events)

    def _finish(self, ref, entry: RunEntry) -> None:
        ray = self.ray
        try:
            outcome = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            entry.status = "pending"
            return
        except ray.exceptions.RayError as e:
            first = (str(e).strip().splitlines() or [""])[0][:200]
            outcome = {"status": "failed", "error": (
                f"its worker process died {entry.attempts} time(s), and --max-retries {self.max_retries} allows "
                f"{self.max_retries} retries ({type(e).__name__}: {first}); run the batch again to continue it "
                "from its checkpoint")}  # fmt: skip
        entry.status, entry.error = outcome["status"], outcome.get("error")
        for key in ("seconds", "files", "previews", "turntables"):
            if key in outcome:
                setattr(entry, key, outcome[key])
        self.bar.update(1)
        if entry.status == "done":
            resumed = f", continued from step {entry.resumed_from}" if entry.resumed_from else ""
            self.bar.write(f"splatdreamer: done {entry.name} in {entry.seconds:.0f} s on {entry.node} "
                           f"(attempt {entry.attempts}{resumed})")  # fmt: skip
        else:
            self.bar.write(f"splatdreamer: failed {entry.name}: {entry.error}")

    def _show(self) -> None:
        self.bar.set_postfix(done=self.count("done"), running=self.count("running"), failed=self.count("failed"))

    def _stop(self, in_flight: dict) -> None:
        """Ctrl-C: cancel the tasks (each stops between two steps and saves a checkpoint: generate's own
        KeyboardInterrupt handling), wait for them a while (a second Ctrl-C stops waiting), save the manifest."""
        ray = self.ray
        self.bar.write("splatdreamer: stopping the runs; each saves a checkpoint (Ctrl-C again to stop at once)")
        for ref in in_flight:
            ray.cancel(ref)
        with contextlib.suppress(KeyboardInterrupt):
            ready, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=60, fetch_local=False)
            self._drain()
            for ref in ready:
                self._finish(ref, in_flight.pop(ref))
        for entry in self.entries:
            if entry.status == "running":
                entry.status = "pending"
        self.save()

    def _summary(self, seconds: float) -> None:
        failed = [e for e in self.entries if e.status == "failed"]
        print(f"splatdreamer: batch of {len(self.entries)} runs in {seconds:.0f} s: {self.count('done')} done, "
              f"{len(failed)} failed; manifest {self.out_dir / MANIFEST}, gallery {self.out_dir / GALLERY}")  # fmt: skip
        if failed:
            print("splatdreamer: failed runs:\n" + "\n".join(f"  {e.name}: {e.error}" for e in failed))
