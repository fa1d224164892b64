"""Particles as standard 3D Gaussian Splatting `.ply` files, the layout every splat viewer reads.

`save_ply` writes Inria's layout (gaussian-splatting `GaussianModel.save_ply`; notes/gsplat.md B5):
one `vertex` element, binary little-endian, float32, properties in this order

    x y z               position (world frame; already the 3DGS convention, up = -Y)
    nx ny nz            zeros (legacy; viewers ignore them, strict Inria-style loaders expect them)
    f_dc_0..2           sh0
    f_rest_0..M-1       shN channel-major: R coefficients 1..K-1, then G, then B; M = 3(K-1) = 0, 9, 24, 45
    opacity             logit
    scale_0..2          log standard deviations
    rot_0..3            unit quaternion w x y z (normalised on save: `unit_quaternions`)

The header holds only `ply`, `format`, `element`, `property` and `end_header` lines with "\\n"
endings, as PlayCanvas/SuperSplat and antimatter15's viewer require.

`load_ply` reads that layout and its common variants (no normals, other property orders, ascii
or big-endian, double precision) by property name. It checks the header itself before plyfile
allocates anything, so a damaged or hostile file raises `PlyFormatError` naming the file and the
problem instead of a parser traceback or a MemoryError: only regular files are opened (a FIFO or a
device would block or never end), counts are bounded, and the memory the data needs is compared
with the memory available before it is read.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from numpy.lib import recfunctions
from plyfile import PlyData, PlyElement, PlyParseError
from torch import Tensor

from splatdreamer.errors import ConfigError, NonFiniteError, PlyFormatError
from splatdreamer.io.atomic import atomic_write
from splatdreamer.io.files import NotARegularFile, open_regular_file
from splatdreamer.splats import KEYS, from_tensors, num_sh_bases, sh_degree_of

# antimatter15's viewer wants the header within 10 KB; an Inria degree-3 header is about 1.3 KB.
MAX_HEADER_BYTES = 64 * 1024
_TYPE_SIZES = {
    "char": 1, "int8": 1, "uchar": 1, "uint8": 1,
    "short": 2, "int16": 2, "ushort": 2, "uint16": 2,
    "int": 4, "int32": 4, "uint": 4, "uint32": 4,
    "float": 4, "float32": 4, "double": 8, "float64": 8,
}  # fmt: skip
_FORMATS = ("binary_little_endian", "binary_big_endian", "ascii")
_SH_DEGREE_OF_F_REST = {0: 0, 9: 1, 24: 2, 45: 3}  # 3 * ((d + 1)^2 - 1) coefficients -> degree d
# The order load_ply gathers columns in; shN's f_rest columns follow these 14.
_REQUIRED = (
    "x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
    "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
)  # fmt: skip
_F_REST = re.compile(r"f_rest_(0|[1-9][0-9]*)")
# What load_ply reads splat-transform's infinities as: sigmoid(20) is 1 in float32, and exp(-20) = 2e-9 is far
# below a pixel at any scene scale, while both stay finite through squaring and gradients.
OPACITY_LOGIT_MAX = 20.0
LOG_SCALE_MIN = -20.0
MAX_COUNT_DIGITS = 15  # element counts up to 10^15 rows; no file of that many rows fits any disk


def _property_names(sh_degree: int) -> list[str]:
    """The vertex properties `save_ply` writes, in Inria's order."""
    rest = [f"f_rest_{i}" for i in range(3 * (num_sh_bases(sh_degree) - 1))]
    return ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", *rest, "opacity",
            "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]  # fmt: skip


def finite_tensors(splats: torch.nn.ParameterDict, what: str, activated: bool = False) -> dict[str, Tensor]:
    """Detached CPU float32 copies of the six tensors, without the Gaussians that hold a NaN or Inf.

    Every writer cleans through here, so no file carries a NaN (and gsplat's exporter never sees
    one: a single NaN opacity makes it drop every splat, notes/gsplat.md B9.2). With `activated`
    (for formats that store exp(scales) and unit quaternions), Gaussians whose exp(scale) overflows
    float32 or whose quaternion has no direction are left out too: a finite log-scale of 1e30 would
    become +inf in the file. Dropping warns (RuntimeWarning) with the count; if every Gaussian of a
    non-empty particle is dropped there is nothing worth writing and `NonFiniteError` is raised.
    `what` names the target in messages. Returns {key: tensor} for `splats.KEYS`, shapes as in the
    particle with N reduced.
    """
    sh_degree_of(splats)  # asserts shN holds (d+1)^2 - 1 coefficients
    tensors = {k: splats[k].detach().to("cpu", torch.float32) for k in KEYS}
    n = tensors["means"].shape[0]
    ok = torch.ones(n, dtype=torch.bool)
    for value in tensors.values():
        finite = torch.isfinite(value)
        ok &= finite.flatten(1).all(1) if value.ndim > 1 else finite
    if activated:
        norm = torch.linalg.vector_norm(tensors["quats"], dim=1)
        ok &= torch.isfinite(torch.exp(tensors["scales"])).all(1) & torch.isfinite(norm) & (norm > 0)
    bad = n - int(ok.sum())
    if bad == 0:
        return tensors
    why = "a NaN or Inf" + (" (of exp(scale) or the unit quaternion included)" if activated else "")
    if bad == n:
        raise NonFiniteError(
            f"{what}: all {n} Gaussians hold {why}, nothing to write. If they come from a run, the optimisation "
            "diverged: lower the learning rates or the guidance scale, or resume from an earlier checkpoint."
        )
    warnings.warn(f"{what}: left out {bad} of {n} Gaussians that hold {why}", RuntimeWarning, stacklevel=3)
    return {k: v[ok] for k, v in tensors.items()}


def unit_quaternions(quats: Tensor) -> Tensor:
    """[N, 4] -> [N, 4]: each quaternion divided by its length, except those already unit to float32 rounding
    (kept bit for bit, so saving a loaded file again changes nothing) and zero ones (no direction to keep)."""
    norm = torch.linalg.vector_norm(quats, dim=1, keepdim=True)
    return torch.where(((norm - 1).abs() > 1e-6) & (norm > 0), quats / norm, quats)


def save_ply(splats: torch.nn.ParameterDict, path: str | os.PathLike) -> int:
    """Write a particle as a standard 3DGS `.ply` (layout in the module docstring), atomically.

    `splats` holds means [N, 3], scales [N, 3] (log), quats [N, 4] (wxyz), opacities [N] (logit),
    sh0 [N, 1, 3] and shN [N, K-1, 3] with SH degree 0..3. Values are written as float32 exactly
    as stored (a float32 particle round-trips bit for bit through `load_ply`), except the quaternions,
    which are normalised (the same rotation). Gaussians holding a
    NaN or Inf are left out with a RuntimeWarning (see `finite_tensors`).
    Returns the number of Gaussians written.
    """
    name = Path(path).name.lower()
    for suffix, fmt in ((".compressed.ply", "ply_compressed"), (".splat", "splat")):
        if name.endswith(suffix):  # a viewer would take the name's word for the layout and fail on this one
            raise ConfigError(
                f"save_ply writes the standard 3DGS .ply layout, not the {suffix} that '{path}' names; write that "
                f"with splatdreamer.io.export.export(splats, path, {fmt!r}), or end the name in .ply"
            )
    degree = sh_degree_of(splats)
    if degree > 3:
        raise ConfigError(f"the 3DGS .ply layout stops at SH degree 3; this particle has degree {degree}")
    t = finite_tensors(splats, str(path))
    # Unit quaternions, unlike Inria's save_ply: the length means nothing to any renderer, while tools that assume
    # unit length lose the rotation (splat-transform's .splat writer clips |q| > 1 components: errors to 0.055).
    t["quats"] = unit_quaternions(t["quats"])
    n = t["means"].shape[0]
    columns = torch.cat(
        [
            t["means"],
            torch.zeros(n, 3),
            t["sh0"].flatten(1),
            t["shN"].transpose(1, 2).flatten(1),  # [N, K-1, 3] -> [N, 3, K-1]: channel-major
            t["opacities"][:, None],
            t["scales"],
            t["quats"],
        ],
        dim=1,
    ).numpy()
    dtype = np.dtype([(name, "<f4") for name in _property_names(degree)])
    vertex = PlyElement.describe(recfunctions.unstructured_to_structured(columns, dtype), "vertex")
    with atomic_write(path, "wb") as f:
        PlyData([vertex], text=False, byte_order="<").write(f)
    return n


@dataclass
class _Element:
    name: str
    count: int
    properties: list[tuple[str, str]] = field(default_factory=list)  # (name, PLY type)


def load_ply(path: str | os.PathLike, requires_grad: bool = True) -> torch.nn.ParameterDict:
    """Read a 3DGS `.ply` into a particle (the inverse of `save_ply`; float32, on the CPU).

    Properties are found by name, so the order and extra properties (normals, colours) do not
    matter; the SH degree follows from the number of `f_rest_*` (0, 9, 24, 45 -> degree 0..3).
    Returns a ParameterDict with means [N, 3], scales [N, 3], quats [N, 4], opacities [N],
    sh0 [N, 1, 3], shN [N, K-1, 3], whose Parameters have `requires_grad` as given.
    Raises `PlyFormatError` (naming the file and the problem) for a missing, empty, truncated,
    non-PLY or malformed file, a header that does not fit the file, missing or miscounted
    properties, list properties, and values that are NaN or infinite; except opacity logits of +inf and
    log-scales of -inf (splat-transform writes them), which are read as `OPACITY_LOGIT_MAX` and
    `LOG_SCALE_MIN` with a RuntimeWarning giving their counts.
    """
    path = Path(path)
    try:
        with _open_regular_file(path) as f:
            size = os.fstat(f.fileno()).st_size
            fmt, elements, header_size = _read_header(f, path)
            _check_data_size(fmt, elements, size - header_size, path)
            vertex = next(e for e in elements if e.name == "vertex")
            names, degree = _vertex_columns(vertex, elements, path)
            _check_memory(elements, vertex, len(names), path)
            f.seek(0)
            try:
                data = PlyData.read(f)["vertex"].data
                values = np.stack([data[name] for name in names], axis=1).astype(np.float32, copy=False)
            except (PlyParseError, ValueError, OverflowError) as e:  # ascii: bad numbers, uchar 300, UTF-8
                raise PlyFormatError(f"{path}: unreadable vertex data ({e})") from None
            except MemoryError:
                raise PlyFormatError(f"{path}: its {vertex.count} Gaussians do not fit in the free memory") from None
    except OSError as e:
        raise PlyFormatError(f"{path}: cannot read the file ({e.strerror or e})") from None

    _clamp_decompressed_infinities(values, path)
    finite = np.isfinite(values)
    if not finite.all():
        rows = int((~finite.all(axis=1)).sum())
        where = ", ".join(names[i] for i in np.flatnonzero(~finite.all(axis=0)))
        raise PlyFormatError(
            f"{path}: {rows} Gaussians hold a NaN or Inf (in {where}); "
            "the file is damaged or was written from a diverged run"
        )
    n, k1 = values.shape[0], num_sh_bases(degree) - 1
    t = torch.from_numpy(values)
    splats = from_tensors(
        means=t[:, 0:3],
        scales=t[:, 7:10],
        quats=t[:, 10:14],
        opacities=t[:, 6],
        sh0=t[:, 3:6].reshape(n, 1, 3),
        shN=t[:, 14:].reshape(n, 3, k1).transpose(1, 2),  # channel-major back to [N, K-1, 3]
    )
    for p in splats.values():
        p.requires_grad_(requires_grad)
    return splats


def _clamp_decompressed_infinities(values: np.ndarray, path: Path) -> None:
    """In place: opacity logit +inf -> OPACITY_LOGIT_MAX, log-scale -inf -> LOG_SCALE_MIN, warning with the counts.

    PlayCanvas's splat-transform writes these when it decompresses a compressed PLY: a fully opaque splat
    (opacity 1, logit +inf) and a scale quantised to 0 (log -inf). Both have a finite meaning; every other
    infinity, and every NaN, still makes the file damaged. Columns as `_REQUIRED`: opacity 6, scales 7..9.
    """
    opacity, scales = values[:, 6], values[:, 7:10]
    opaque, flat = opacity == np.inf, scales == -np.inf
    if not opaque.any() and not flat.any():
        return
    opacity[opaque] = OPACITY_LOGIT_MAX
    scales[flat] = LOG_SCALE_MIN
    warnings.warn(
        f"{path}: read {int(opaque.sum())} opacity logits of +inf as {OPACITY_LOGIT_MAX:g} and "
        f"{int(flat.any(1).sum())} Gaussians' log-scales of -inf as {LOG_SCALE_MIN:g} "
        "(as splat-transform writes fully opaque and zero-size splats)",
        RuntimeWarning,
        stacklevel=3,
    )


def unused_properties(path: str | os.PathLike) -> list[str]:
    """The vertex properties of a readable 3DGS .ply that `load_ply` does not take (anything besides the 14
    required, f_rest_* and the normals nx ny nz, e.g. Mip-Splatting's filter_3D), and any other elements, as
    "element" names: what a conversion of the file leaves behind."""
    path = Path(path)
    with _open_regular_file(path) as f:
        _, elements, _ = _read_header(f, path)
    used = {*_REQUIRED, "nx", "ny", "nz"}
    vertex = next(e for e in elements if e.name == "vertex")
    names = [name for name, _ in vertex.properties if name not in used and not _F_REST.fullmatch(name)]
    return names + [f'element "{e.name}"' for e in elements if e.name != "vertex"]


def _open_regular_file(path: Path):
    try:
        return open_regular_file(path)
    except NotARegularFile as e:
        raise _fail(path, f"cannot read it as a .ply: it is {e.kind}; give a .ply file") from None


def available_memory() -> int | None:
    """Bytes of memory this process can still use (Linux: MemAvailable, or the cgroup's limit if lower);
    None where it cannot be told."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    if not found and hasattr(os, "sysconf"):
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError):
            pass
    return min(found) if found else None


def _check_memory(elements: list[_Element], vertex: _Element, columns: int, path: Path) -> None:
    """Refuse a file whose data (a truthful but huge one, e.g. a sparse file) would not fit in memory:
    plyfile's arrays of every element, then the float32 columns and the particle's copy of them."""
    need = sum(e.count * sum(_TYPE_SIZES[t] for _, t in e.properties) for e in elements)
    need += 2 * vertex.count * columns * 4
    free = available_memory()
    if free is not None and need > free:
        raise _fail(path, f"its {vertex.count} Gaussians need about {need / 2**30:.1f} GiB of memory to load, "
                          f"but only {free / 2**30:.1f} GiB are free; load it on a machine with more memory")  # fmt: skip


def _fail(path: Path, problem: str) -> PlyFormatError:
    return PlyFormatError(f"{path}: {problem}")


def _quote(line: str) -> str:
    """A header line for a message, cut short (a hostile header may hold one enormous line)."""
    return repr(line if len(line) <= 60 else line[:60] + "...")


def _read_header(f, path: Path) -> tuple[str, list[_Element], int]:
    """Parse the header from at most MAX_HEADER_BYTES; returns (format, elements, header bytes)."""
    head = f.read(MAX_HEADER_BYTES)
    if not head:
        raise _fail(path, "the file is empty")
    # plyfile takes the line ending from the magic line; so do we, so both agree where data starts.
    newline = b"\r\n" if head.startswith(b"ply\r\n") else b"\n"
    if not head.startswith(b"ply" + newline):
        if Path(path).suffix.lower() == ".splat":  # our own export: 32-byte rows, no header
            raise _fail(path, "a .splat file (an export for web viewers, without a header or SH); splatdreamer "
                              "reads .ply files: use the .ply it was converted from")  # fmt: skip
        raise _fail(path, f"not a PLY file (it starts with {head[:16]!r}, not the line 'ply')")
    end = head.find(newline + b"end_header" + newline)
    if end < 0:
        if len(head) == MAX_HEADER_BYTES:
            raise _fail(path, f"no 'end_header' within the first {MAX_HEADER_BYTES // 1024} KiB; "
                              "a splat file's header is a few KB")  # fmt: skip
        raise _fail(path, "the header has no 'end_header' line (truncated, or not a PLY file)")
    try:
        text = head[:end].decode("ascii")
    except UnicodeDecodeError:
        raise _fail(path, "the header holds non-ASCII bytes") from None

    fmt = None
    elements: list[_Element] = []
    for number, line in enumerate(text.split(newline.decode())[1:], start=2):
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        where = f"header line {number} {_quote(line)}"
        if fmt is None:
            if words[0] != "format" or len(words) != 3 or words[1] not in _FORMATS or words[2] != "1.0":
                raise _fail(path, f"{where}: expected 'format binary_little_endian 1.0' (or big-endian, ascii)")
            fmt = words[1]
        elif words[0] == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise _fail(path, f"{where}: expected 'element <name> <count>'")
            if len(words[2]) > MAX_COUNT_DIGITS:
                raise _fail(path, f"{where}: a count of {len(words[2])} digits; no splat file has that many rows")
            if any(e.name == words[1] for e in elements):
                raise _fail(path, f"{where}: element '{words[1]}' appears twice")
            elements.append(_Element(words[1], int(words[2])))
        elif words[0] == "property":
            if not elements:
                raise _fail(path, f"{where}: a property before any element")
            if len(words) > 1 and words[1] == "list":
                raise _fail(path, f"{where}: list property in element '{elements[-1].name}'; "
                                  "splat files hold only scalar properties")  # fmt: skip
            if len(words) != 3 or words[1] not in _TYPE_SIZES:
                raise _fail(path, f"{where}: expected 'property <type> <name>' with a PLY scalar type")
            if any(name == words[2] for name, _ in elements[-1].properties):
                raise _fail(path, f"{where}: property '{words[2]}' appears twice")
            elements[-1].properties.append((words[2], words[1]))
        else:
            raise _fail(path, f"{where}: unexpected (a header holds one format line, then element, "
                              "property and comment lines)")  # fmt: skip
    if fmt is None:
        raise _fail(path, "the header has no 'format' line")
    for e in elements:
        if e.count > 0 and not e.properties:
            raise _fail(path, f"element '{e.name}' has {e.count} rows but no properties")
    if not any(e.name == "vertex" for e in elements):
        raise _fail(path, "the header declares no 'vertex' element")
    return fmt, elements, end + len(newline + b"end_header" + newline)


def _check_data_size(fmt: str, elements: list[_Element], data_bytes: int, path: Path) -> None:
    """Check the header's counts against the bytes that follow it, before anything is allocated."""
    claimed = ", ".join(f"{e.count} {e.name}" for e in elements)
    if fmt == "ascii":
        # Each value takes a digit and a separator at least: 2 bytes per value, less a final newline.
        least = sum(e.count * 2 * len(e.properties) for e in elements) - 1
        if least > data_bytes:
            raise _fail(path, f"the header claims {claimed} rows but only {data_bytes} bytes of ascii data "
                              "follow (truncated, or the counts are wrong)")  # fmt: skip
        return
    expected = sum(e.count * sum(_TYPE_SIZES[t] for _, t in e.properties) for e in elements)
    if expected > data_bytes:
        raise _fail(path, f"truncated: the header claims {claimed} rows ({expected} bytes) "
                          f"but only {data_bytes} bytes follow it")  # fmt: skip
    if expected < data_bytes:
        raise _fail(path, f"{data_bytes - expected} unexpected bytes after the data the header "
                          f"describes ({claimed} rows, {expected} bytes)")  # fmt: skip


def _vertex_columns(vertex: _Element, elements: list[_Element], path: Path) -> tuple[list[str], int]:
    """The vertex properties to gather (the 14 required, then f_rest_0..M-1) and the SH degree."""
    present = {name for name, _ in vertex.properties}
    missing = [name for name in _REQUIRED if name not in present]
    if missing:
        hint = ""
        if "packed_position" in present or any(e.name == "chunk" for e in elements):
            hint = ("; this is a compressed PLY (SuperSplat), which splatdreamer writes but cannot read: decompress it "
                    "with PlayCanvas's splat-transform (npx @playcanvas/splat-transform IN.compressed.ply OUT.ply)")
        raise _fail(path, f"the vertex element lacks {', '.join(missing)}: not a 3D Gaussian splat file "
                          f"(needs x y z, f_dc_0..2, opacity, scale_0..2, rot_0..3){hint}")  # fmt: skip
    rest = sorted(int(m.group(1)) for name in present if (m := _F_REST.fullmatch(name)))
    if rest != list(range(len(rest))):
        raise _fail(path, f"the f_rest properties are not numbered 0..{len(rest) - 1}")
    if len(rest) not in _SH_DEGREE_OF_F_REST:
        raise _fail(path, f"{len(rest)} f_rest properties fit no SH degree (0, 9, 24 or 45 for degree 0..3)")
    return [*_REQUIRED, *(f"f_rest_{i}" for i in rest)], _SH_DEGREE_OF_F_REST[len(rest)]
