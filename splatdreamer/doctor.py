"""`splatdreamer doctor`: what this machine can do, and what to do next."""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path

import torch

from splatdreamer.config import DEFAULT_PRIOR


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def gsplat_kernels_status() -> str:
    """Whether gsplat's CUDA kernels are usable, without compiling them (that takes minutes)."""
    if not torch.cuda.is_available():
        return "unusable: no CUDA device (the reference rasterizer renders instead)"
    try:
        from gsplat import csrc  # noqa: F401  (a prebuilt extension)

        return "prebuilt extension found"
    except ImportError:
        pass
    from torch.utils.cpp_extension import _get_build_directory

    built = Path(_get_build_directory("gsplat_cuda", verbose=False)) / "gsplat_cuda.so"
    if built.exists():
        return f"compiled ({built})"
    return (
        "not compiled yet: the first CUDA render builds them (2-15 minutes, once per machine; faster with "
        "TORCH_CUDA_ARCH_LIST set to this GPU's compute capability and MAX_JOBS to its core count)"
    )


def toy_prior_status() -> str:
    path = Path(__file__).parent / "toy" / "prior"
    if (path / "model_index.json").is_file():
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20
        return f"found ({path}, {size:.1f} MB)"
    return f"missing from {path}: reinstall splatdreamer, or train it with `splatdreamer toy train`"


def hub_prior_status(repo_id: str = DEFAULT_PRIOR, cache_dir: str | Path | None = None) -> str:
    """Whether `repo_id` is complete in the local HF cache: model_index.json and every component's files
    and weights, checked as a run would check them (`prior.loading.check`), without reading any weights."""
    from splatdreamer.errors import PriorLoadError
    from splatdreamer.prior.loading import WAYS_OUT, check

    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "model_index.json", cache_dir=cache_dir)
    except Exception as e:  # any hub-client failure just means "not usable offline"
        return f"cannot check the HF cache ({type(e).__name__})"
    if not isinstance(hit, str):
        return "not in the local HF cache"
    snapshot = Path(hit).parent
    try:
        check(snapshot)
    except PriorLoadError as e:
        problem = str(e).replace(WAYS_OUT, "").strip().rstrip(".")
        return f"incomplete in the local HF cache: {problem}; download it again (huggingface-cli download {repo_id})"
    return f"in the local HF cache ({snapshot})"


def doctor() -> None:
    cuda = torch.cuda.is_available()
    rows = [
        ("python", platform.python_version()),
        ("torch", f"{torch.__version__} ({'CUDA ' + str(torch.version.cuda) if torch.version.cuda else 'CPU build'})"),
        ("CUDA device", torch.cuda.get_device_name(0) if cuda else "none"),
        ("diffusers / peft", f"{_version('diffusers')} / {_version('peft')}"),
        ("gsplat", _version("gsplat")),
        ("gsplat kernels", gsplat_kernels_status()),
        ("toy prior", toy_prior_status()),
        (DEFAULT_PRIOR, hub_prior_status()),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print()
    if cuda:
        print("next: splatdreamer generate --prompt 'a hamburger' (Stable Diffusion 2.1-base, 512 px, on the GPU)")
    else:
        print("next: splatdreamer generate --preset toy --prompt 'a red ball' (the embedded prior, a few minutes on this CPU)")
    if not rows[-1][1].startswith("in the local"):
        print(
            f"      for Stable Diffusion, download {DEFAULT_PRIOR} on a machine with network access "
            "(huggingface-cli download ...) and pass its directory with --prior.name DIR"
        )
