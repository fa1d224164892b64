import os
import random
import socket
import subprocess
import sys
import stat
import threading
import tracemalloc
import warnings

import numpy as np
import plyfile
import pytest
import torch
from gsplat import export_splats
from PIL import Image

from splatdreamer import splats as S
from splatdreamer.render import reference
from splatdreamer.errors import ConfigError, NonFiniteError, PlyFormatError, RunFolderError
from splatdreamer.io import ply as ply_module
from splatdreamer.io.atomic import atomic_save_torch, atomic_write, remove_stale_temporaries
from splatdreamer.io.export import export, format_from_path
from splatdreamer.io.lock import LOCK, RunLock
from splatdreamer.io.images import GUTTER_VALUE, contact_sheet, save_gif, save_png, to_uint8
from splatdreamer.io.ply import load_ply, save_ply

REQUIRED = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
            "rot_0", "rot_1", "rot_2", "rot_3"]  # fmt: skip


def particle(n: int, sh_degree: int, seed: int = 0, edge_values: bool = True) -> torch.nn.ParameterDict:
    """Random values in every tensor (quats not normalised); with `edge_values`, float32 edge cases
    in row 0's position."""
    g = torch.Generator().manual_seed(seed)
    k1 = (sh_degree + 1) ** 2 - 1
    p = S.from_tensors(
        means=torch.randn(n, 3, generator=g),
        scales=torch.randn(n, 3, generator=g) - 3,
        quats=torch.randn(n, 4, generator=g) * 2,
        opacities=torch.randn(n, generator=g),
        sh0=torch.randn(n, 1, 3, generator=g),
        shN=torch.randn(n, k1, 3, generator=g),
    )
    if edge_values:
        with torch.no_grad():
            p["means"][0] = torch.tensor([-0.0, 1e-40, 3.0e38])  # negative zero, subnormal, near max
    return p


def as_saved(p: torch.nn.ParameterDict) -> dict[str, torch.Tensor]:
    """The particle's values as `save_ply` writes them: quaternions normalised, the rest as stored."""
    return {k: ply_module.unit_quaternions(v.detach()) if k == "quats" else v.detach() for k, v in p.items()}


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw float32 bits, so -0.0 != 0.0 in comparisons."""
    return t.detach().contiguous().view(torch.int32)


def write_ply(path, columns: dict[str, np.ndarray], text=False, byte_order="<", dtype="f4") -> None:
    """A vertex-only PLY with the given properties in the given order, written by plyfile itself."""
    n = len(next(iter(columns.values())))
    data = np.empty(n, dtype=[(name, dtype) for name in columns])
    for name, values in columns.items():
        data[name] = values
    plyfile.PlyData([plyfile.PlyElement.describe(data, "vertex")], text=text, byte_order=byte_order).write(str(path))


def inria_columns(p: torch.nn.ParameterDict) -> dict[str, np.ndarray]:
    """The particle's values under the standard property names (f_rest channel-major)."""
    n = p["means"].shape[0]
    flat = {
        "x": p["means"][:, 0], "y": p["means"][:, 1], "z": p["means"][:, 2],
        **{f"f_dc_{i}": p["sh0"][:, 0, i] for i in range(3)},
        "opacity": p["opacities"],
        **{f"scale_{i}": p["scales"][:, i] for i in range(3)},
        **{f"rot_{i}": p["quats"][:, i] for i in range(4)},
    }  # fmt: skip
    rest = p["shN"].transpose(1, 2).reshape(n, -1)
    flat.update({f"f_rest_{i}": rest[:, i] for i in range(rest.shape[1])})
    return {k: v.detach().numpy() for k, v in flat.items()}


# ------------------------------------------------------------------------------------- atomic


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "sub" / "dir" / "f.txt"
    with atomic_write(target, "w") as f:
        f.write("first\n")
    assert target.read_text() == "first\n"  # missing parents are created

    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target, "w") as f:
            f.write("second, half written")
            raise RuntimeError("boom")
    assert target.read_text() == "first\n"
    assert os.listdir(target.parent) == ["f.txt"]  # the temporary file is gone

    with atomic_write(target, "wb") as f:
        f.write(b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"

    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert target.stat().st_mode == plain.stat().st_mode  # umask applies, not tempfile's 0o600

    with pytest.raises(ValueError, match="mode"):
        with atomic_write(target, "a"):
            pass


def test_atomic_write_writes_through_links_and_never_replaces_a_fifo_or_a_folder(tmp_path):
    """Found by a hostile-input pass: os.replace put a regular file in place of a FIFO, a symbolic link (the file
    it named was left as it was) and, for root, a device such as /dev/null."""
    target = tmp_path / "real.ply"
    target.write_text("old")
    link = tmp_path / "link.ply"
    link.symlink_to(target)
    with atomic_write(link, "w") as f:
        f.write("new")
    assert link.is_symlink() and target.read_text() == "new"
    fifo = tmp_path / "pipe.splat"
    os.mkfifo(fifo)
    (tmp_path / "empty").mkdir()
    for path, kind in [(fifo, "a FIFO"), (tmp_path / "empty", "a folder")]:
        with pytest.raises(ConfigError, match=f"cannot write {path}: it is {kind}, not a file"):
            with atomic_write(path, "w") as f:
                f.write("x")
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and (tmp_path / "empty").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "link.ply", "pipe.splat", "real.ply"]


def test_atomic_save_torch(tmp_path):
    state = {"step": 7, "w": torch.arange(5.0)}
    atomic_save_torch(state, tmp_path / "ckpt.pt")
    loaded = torch.load(tmp_path / "ckpt.pt")
    assert loaded["step"] == 7 and torch.equal(loaded["w"], state["w"])


# --------------------------------------------------------------------------------- ply write


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    keep = [tmp_path / "checkpoint.pt", tmp_path / ".hidden.tmp", tmp_path / ".notes.txt.tmp", tmp_path / "a.tmp"]
    stale = [tmp_path / ".checkpoint.pt.0a1b2c3d.tmp", tmp_path / "previews" / ".step_000100.png.deadbeef.tmp"]
    for path in keep + stale:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"x" * 10)
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)


def test_run_lock_holds_the_pid_and_is_released(tmp_path):
    with RunLock(tmp_path) as lock:
        pid, host, start = (tmp_path / LOCK).read_text().split()
        assert int(pid) == os.getpid() and lock.owner() == f"pid {os.getpid()}"
        with pytest.raises(RunFolderError, match=rf"in use by another splatdreamer run \(pid {os.getpid()}\)"):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / LOCK).exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary left either


def test_run_lock_of_a_living_process_is_refused_and_a_dead_ones_is_taken_over(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK).write_text(f"{child.pid} {socket.gethostname()} -\n")
        with pytest.raises(RunFolderError, match=rf"pid {child.pid}\).*delete {tmp_path / LOCK}"):
            RunLock(tmp_path).acquire()
    finally:
        child.kill()
        child.wait()
    with RunLock(tmp_path):  # the same lock is stale now
        assert (tmp_path / LOCK).read_text().split()[0] == str(os.getpid())
    (tmp_path / LOCK).write_text("garbage")  # not a lock RunLock writes: stale too
    with RunLock(tmp_path):
        assert (tmp_path / LOCK).read_text().split()[0] == str(os.getpid())


def test_run_lock_with_a_reused_pid_is_stale(tmp_path):
    """Our own pid, but another start time: the process that wrote it is gone and the pid was reused."""
    if not os.path.exists(f"/proc/{os.getpid()}/stat"):
        pytest.skip("start times are read from /proc (Linux)")
    (tmp_path / LOCK).write_text(f"{os.getpid()} {socket.gethostname()} 1\n")
    assert RunLock(tmp_path).owner() is None


def test_run_lock_of_another_host_is_refused(tmp_path):
    (tmp_path / LOCK).write_text("1 some-other-host -\n")
    with pytest.raises(RunFolderError, match="pid 1 on some-other-host"):
        RunLock(tmp_path).acquire()


def test_run_lock_in_a_folder_that_cannot_be_written(tmp_path):
    with pytest.raises(RunFolderError, match=r"cannot write in /proc/1 .*--output.out-dir"):
        RunLock("/proc/1").acquire()


@pytest.mark.parametrize("degree", [0, 3])
def test_ply_round_trip_is_bit_exact_but_for_normalised_quaternions(tmp_path, degree):
    p = particle(37, degree)
    assert save_ply(p, tmp_path / "p.ply") == 37
    q = load_ply(tmp_path / "p.ply")
    assert S.sh_degree_of(q) == degree
    for k in S.KEYS:
        assert q[k].shape == p[k].shape and q[k].dtype == torch.float32
        assert torch.equal(bits(q[k]), bits(as_saved(p)[k])), k
        assert q[k].requires_grad
    assert not any(v.requires_grad for v in load_ply(tmp_path / "p.ply", requires_grad=False).values())


def test_ply_header_and_layout_are_standard(tmp_path):
    p = particle(4, sh_degree=1)
    save_ply(p, tmp_path / "p.ply")
    raw = (tmp_path / "p.ply").read_bytes()
    names = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(9)]
             + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])  # fmt: skip
    header = "ply\nformat binary_little_endian 1.0\nelement vertex 4\n"
    header += "".join(f"property float {n}\n" for n in names) + "end_header\n"
    assert raw[: len(header)] == header.encode("ascii")
    rows = np.frombuffer(raw[len(header) :], dtype="<f4").reshape(4, len(names))
    col = {n: rows[:, i] for i, n in enumerate(names)}
    assert (rows[:, 3:6] == 0).all()  # zero normals
    # Channel-major f_rest: the three R coefficients, then G, then B.
    np.testing.assert_array_equal(col["f_rest_0"], p["shN"][:, 0, 0].detach().numpy())
    np.testing.assert_array_equal(col["f_rest_2"], p["shN"][:, 2, 0].detach().numpy())
    np.testing.assert_array_equal(col["f_rest_3"], p["shN"][:, 0, 1].detach().numpy())
    np.testing.assert_array_equal(col["f_rest_8"], p["shN"][:, 2, 2].detach().numpy())
    np.testing.assert_array_equal(col["opacity"], p["opacities"].detach().numpy())  # logit, as stored
    np.testing.assert_array_equal(col["scale_1"], p["scales"][:, 1].detach().numpy())  # log, as stored
    unit = torch.nn.functional.normalize(p["quats"].detach(), dim=1).numpy()
    np.testing.assert_allclose(rows[:, -4:], unit, rtol=0, atol=1e-7)  # w x y z, normalised


def test_saved_quaternions_are_unit_so_8_bit_writers_that_assume_it_keep_the_rotation(tmp_path):
    """The decision: .ply files hold unit quaternions. Every renderer normalises, so nothing changes on screen,
    while a writer that assumes unit length, as splat-transform's .splat writer (round(q * 128 + 128) clipped
    to 0..255), is exact to its 8-bit step instead of clipping long quaternions (errors up to 0.055)."""
    g = torch.Generator().manual_seed(5)
    p = particle(200, 0, edge_values=False)
    with torch.no_grad():
        p["quats"].mul_(torch.rand(200, 1, generator=g) * 3 + 0.2)  # lengths 0.2 .. 3.2, as training leaves them
        p["quats"][0] = 0.0  # no direction: stays zero
    save_ply(p, tmp_path / "p.ply")
    q = load_ply(tmp_path / "p.ply", requires_grad=False)["quats"]
    norms = torch.linalg.vector_norm(q[1:], dim=1)
    assert torch.allclose(norms, torch.ones(199), atol=1e-6) and torch.equal(q[0], torch.zeros(4))
    original = reference.quat_scale_to_covar(p["quats"][1:].detach(), torch.ones(199, 3) * torch.arange(1, 4))
    loaded = reference.quat_scale_to_covar(q[1:], torch.ones(199, 3) * torch.arange(1, 4))
    torch.testing.assert_close(loaded, original, atol=1e-5, rtol=1e-5)  # the same Gaussians

    def eight_bit(quats: torch.Tensor) -> torch.Tensor:
        return (torch.round(quats * 128 + 128).clamp(0, 255) - 128) / 128

    def error(quats: torch.Tensor) -> float:  # of the decoded unit quaternion, sign-insensitive
        unit = torch.nn.functional.normalize(quats, dim=1)
        decoded = torch.nn.functional.normalize(eight_bit(quats), dim=1)
        return (1 - (unit * decoded).sum(1).abs()).max().item()

    assert error(q[1:]) < 1e-3  # only the 8-bit rounding
    assert error(p["quats"][1:].detach()) > 0.01  # what raw lengths would have cost
    save_ply(load_ply(tmp_path / "p.ply"), tmp_path / "again.ply")
    assert (tmp_path / "again.ply").read_bytes() == (tmp_path / "p.ply").read_bytes()  # saving again is exact


def test_save_ply_refuses_a_name_that_promises_another_format(tmp_path):
    """A .splat or .compressed.ply name holding the standard layout would fail in the viewer that trusts the name;
    save_ply names export() instead and writes nothing."""
    p = particle(5, sh_degree=0)
    for name, fmt in [("x.splat", "'splat'"), ("x.compressed.ply", "'ply_compressed'"), ("X.SPLAT", "'splat'")]:
        with pytest.raises(ConfigError, match=f"export\\(splats, path, {fmt}\\)"):
            save_ply(p, tmp_path / name)
        assert not (tmp_path / name).exists()
    assert save_ply(p, tmp_path / "x.ply") == 5


def test_save_ply_leaves_out_nonfinite_gaussians_with_a_warning(tmp_path):
    p = particle(5, sh_degree=1)
    with torch.no_grad():
        p["opacities"][1] = float("nan")
        p["shN"][3, 2, 1] = float("inf")
    with pytest.warns(RuntimeWarning, match="left out 2 of 5"):
        assert save_ply(p, tmp_path / "p.ply") == 3
    q = load_ply(tmp_path / "p.ply")
    keep = torch.tensor([0, 2, 4])
    for k in S.KEYS:
        assert torch.equal(q[k], as_saved(p)[k][keep]), k

    with torch.no_grad():
        p["means"][:] = float("nan")
    with pytest.raises(NonFiniteError, match="all 5 Gaussians"):
        save_ply(p, tmp_path / "nan.ply")
    assert not (tmp_path / "nan.ply").exists()


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "p.ply"
    save_ply(particle(3, 0), target)
    before = target.read_bytes()

    def write_half_then_fail(self, stream):
        stream.write(b"ply\nformat binary_little_endian 1.0\n")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ply_module.PlyData, "write", write_half_then_fail)
    with pytest.raises(OSError, match="No space"):
        save_ply(particle(3, 0, seed=1), target)
    with pytest.raises(OSError, match="No space"):
        save_ply(particle(3, 0, seed=1), tmp_path / "new.ply")
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["p.ply"]


# ---------------------------------------------------------------------------------- ply read


@pytest.mark.parametrize("text,byte_order,dtype", [(False, "<", "f4"), (False, ">", "f4"), (True, "=", "f4"),
                                                   (False, "<", "f8")])  # fmt: skip
def test_load_reads_by_name_in_any_order_without_normals(tmp_path, text, byte_order, dtype):
    p = particle(6, sh_degree=2)
    columns = inria_columns(p)
    names = list(columns)[::-1]  # reversed order, no normals, one extra property
    write_ply(tmp_path / "v.ply", {"red": np.zeros(6), **{n: columns[n] for n in names}}, text, byte_order, dtype)
    q = load_ply(tmp_path / "v.ply")
    assert S.sh_degree_of(q) == 2
    for k in S.KEYS:
        assert torch.equal(q[k], p[k]), k  # float32 values survive ascii ("%.18g") and doubles exactly


def test_load_accepts_crlf_header(tmp_path):
    p = particle(3, 0)
    save_ply(p, tmp_path / "p.ply")
    raw = (tmp_path / "p.ply").read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    (tmp_path / "crlf.ply").write_bytes(raw[:end].replace(b"\n", b"\r\n") + raw[end:])
    q = load_ply(tmp_path / "crlf.ply")
    for k in S.KEYS:
        assert torch.equal(q[k], as_saved(p)[k]), k


def test_load_reads_gsplat_exports(tmp_path):
    p = particle(9, sh_degree=3)
    export_splats(**{k: p[k].detach() for k in S.KEYS}, format="ply", save_to=str(tmp_path / "g.ply"))
    q = load_ply(tmp_path / "g.ply")
    for k in S.KEYS:
        assert torch.equal(q[k], p[k]), k


def valid_ply_bytes(tmp_path, n=10) -> bytes:
    save_ply(particle(n, 0), tmp_path / "valid.ply")
    return (tmp_path / "valid.ply").read_bytes()


def malformed(tmp_path, case: str) -> bytes:
    """The bytes of a broken file; several start from a valid 10-Gaussian degree-0 file."""
    good = valid_ply_bytes(tmp_path)
    header_end = good.index(b"end_header\n")
    match case:
        case "truncated":
            return good[:-10]
        case "extra bytes":
            return good + b"\x00" * 8
        case "absurd count":
            return good.replace(b"element vertex 10\n", b"element vertex 1000000000000\n")
        case "text garbage":
            return b"hello, this is not a point cloud\n" * 20
        case "empty":
            return b""
        case "huge header":
            return b"ply\nformat binary_little_endian 1.0\n" + b"comment " + b"x" * 200_000 + b"\nend_header\n"
        case "list property":
            return good[:header_end] + b"property list uchar int vertex_indices\n" + good[header_end:]
        case "no end_header":
            return good[:header_end]
        case "bad format":
            return good.replace(b"binary_little_endian 1.0", b"binary_middle_endian 1.0")
        case "non-ascii header":
            return good.replace(b"property float nx", b"property float n\xff")
        case "unknown header line":
            return good.replace(b"element vertex 10\n", b"element vertex 10\nfoo bar\n")
        case "duplicate property":
            return good.replace(b"property float ny", b"property float nx")
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case,problem",
    [
        ("truncated", "truncated"),
        ("extra bytes", "8 unexpected bytes"),
        ("absurd count", "claims 1000000000000 vertex rows"),
        ("text garbage", "not a PLY file"),
        ("empty", "empty"),
        ("huge header", "no 'end_header' within the first 64 KiB"),
        ("list property", "list property"),
        ("no end_header", "no 'end_header'"),
        ("bad format", "format"),
        ("non-ascii header", "non-ASCII"),
        ("unknown header line", "'foo bar'"),
        ("duplicate property", "'nx' appears twice"),
    ],
)
def test_malformed_files_raise_ply_format_error(tmp_path, case, problem):
    path = tmp_path / "broken.ply"
    path.write_bytes(malformed(tmp_path, case))
    with pytest.raises(PlyFormatError, match=problem) as info:
        load_ply(path)
    assert str(path) in str(info.value)
    # No plyfile/numpy traceback rides along as the cause or context.
    assert info.value.__cause__ is None and (info.value.__context__ is None or info.value.__suppress_context__)


@pytest.mark.parametrize("text", [False, True])
def test_absurd_vertex_count_fails_before_allocating(tmp_path, text):
    path = tmp_path / "huge.ply"
    if text:  # plyfile's ascii reader would np.empty() all claimed rows before reading one
        write_ply(path, inria_columns(particle(10, 0)), text=True)
        path.write_bytes(path.read_bytes().replace(b"element vertex 10\n", b"element vertex 1000000000000\n"))
    else:
        path.write_bytes(malformed(tmp_path, "absurd count"))
    tracemalloc.start()
    with pytest.raises(PlyFormatError):
        load_ply(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1 << 20, peak  # the 10^12 rows (248 TB) are never allocated; the header read is 64 KiB


def test_missing_property_is_named(tmp_path):
    columns = inria_columns(particle(4, 0))
    del columns["rot_3"]
    write_ply(tmp_path / "m.ply", columns)
    with pytest.raises(PlyFormatError, match="lacks rot_3"):
        load_ply(tmp_path / "m.ply")


def test_f_rest_count_must_fit_an_sh_degree(tmp_path):
    columns = inria_columns(particle(4, 1))
    del columns["f_rest_8"]
    write_ply(tmp_path / "r.ply", columns)
    with pytest.raises(PlyFormatError, match="8 f_rest properties fit no SH degree"):
        load_ply(tmp_path / "r.ply")
    columns = inria_columns(particle(4, 1))
    columns["f_rest_9"] = columns.pop("f_rest_0")
    write_ply(tmp_path / "g.ply", columns)
    with pytest.raises(PlyFormatError, match="not numbered 0..8"):
        load_ply(tmp_path / "g.ply")


def test_nan_in_file_is_rejected(tmp_path):
    columns = inria_columns(particle(4, 0))
    columns["scale_2"][1] = np.nan
    columns["x"][3] = np.inf
    write_ply(tmp_path / "n.ply", columns)
    with pytest.raises(PlyFormatError, match=r"2 Gaussians hold a NaN or Inf \(in x, scale_2\)"):
        load_ply(tmp_path / "n.ply")


def test_splat_transform_infinities_load_as_finite_values_with_a_warning(tmp_path):
    """splat-transform's decompressed PLY: opacity logit +inf (fully opaque), log-scale -inf (zero size)."""
    columns = inria_columns(particle(5, 1))
    columns["opacity"][[0, 3]] = np.inf
    columns["scale_1"][2] = -np.inf
    columns["scale_0"][2] = -np.inf  # one Gaussian, two flat axes: counted once
    columns["scale_2"][4] = -np.inf
    write_ply(tmp_path / "d.ply", columns)
    with pytest.warns(RuntimeWarning, match=r"2 opacity logits of \+inf as 20 and 2 Gaussians' log-scales of -inf"):
        splats = load_ply(tmp_path / "d.ply")
    assert all(torch.isfinite(v).all() for v in splats.values())
    assert splats["opacities"][[0, 3]].tolist() == [ply_module.OPACITY_LOGIT_MAX] * 2
    assert torch.sigmoid(splats["opacities"][0]).item() == 1.0  # as opaque as the file meant, in float32
    assert splats["scales"][2, :2].tolist() == [ply_module.LOG_SCALE_MIN] * 2 and splats["scales"][4, 2] == -20.0
    untouched = torch.from_numpy(columns["opacity"][[1, 2, 4]])
    assert torch.equal(splats["opacities"][[1, 2, 4]].detach(), untouched)  # the other values exactly as written
    assert torch.equal(splats["scales"][2, 2].detach(), torch.tensor(columns["scale_2"][2]))


@pytest.mark.parametrize(
    "column, value",
    [("opacity", -np.inf), ("opacity", np.nan), ("scale_0", np.inf), ("scale_1", np.nan), ("x", -np.inf),
     ("rot_0", np.inf), ("f_dc_0", np.inf)],
)  # fmt: skip
def test_other_infinities_and_nan_are_still_refused(tmp_path, column, value):
    columns = inria_columns(particle(4, 0))
    columns[column][1] = value
    columns["opacity"][2] = np.inf  # accepted beside it, but the file is still refused
    write_ply(tmp_path / "n.ply", columns)
    with pytest.raises(PlyFormatError, match=rf"1 Gaussians hold a NaN or Inf \(in {column}\)"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_ply(tmp_path / "n.ply")


def test_ascii_problems_and_missing_files(tmp_path):
    columns = inria_columns(particle(3, 0))
    write_ply(tmp_path / "a.ply", columns, text=True)
    raw = (tmp_path / "a.ply").read_bytes()
    lines = raw.split(b"\n")
    lines[-2] = b"1 2 zz " + lines[-2].split(b" ", 3)[3]  # a value that is not a number
    (tmp_path / "bad.ply").write_bytes(b"\n".join(lines))
    with pytest.raises(PlyFormatError, match="unreadable vertex data"):
        load_ply(tmp_path / "bad.ply")
    (tmp_path / "short.ply").write_bytes(raw[: raw.index(b"end_header\n") + 20])
    with pytest.raises(PlyFormatError, match="only 9 bytes of ascii data"):
        load_ply(tmp_path / "short.ply")
    with pytest.raises(PlyFormatError, match="cannot read"):
        load_ply(tmp_path / "missing.ply")
    with pytest.raises(PlyFormatError, match="cannot read"):
        load_ply(tmp_path)  # a directory


def test_a_count_of_5000_digits_is_a_format_error(tmp_path):
    for text in (False, True):
        write_ply(tmp_path / "a.ply", inria_columns(particle(3, 0)), text=text)
        raw = (tmp_path / "a.ply").read_bytes().replace(b"element vertex 3\n", b"element vertex " + b"7" * 5000 + b"\n")
        (tmp_path / "a.ply").write_bytes(raw)
        with pytest.raises(PlyFormatError, match="a count of 5000 digits"):
            load_ply(tmp_path / "a.ply")


@pytest.mark.parametrize("value", [b"300", b"-5"])
def test_ascii_uchar_out_of_range_is_a_format_error(tmp_path, value):
    columns = inria_columns(particle(3, 0))
    data = np.empty(3, dtype=[*[(name, "f4") for name in columns], ("red", "u1")])
    for name, values in columns.items():
        data[name] = values
    data["red"] = 7
    plyfile.PlyData([plyfile.PlyElement.describe(data, "vertex")], text=True).write(str(tmp_path / "a.ply"))
    raw = (tmp_path / "a.ply").read_bytes()
    head, body = raw.split(b"end_header\n")
    (tmp_path / "a.ply").write_bytes(head + b"end_header\n" + body.replace(b" 7\n", b" " + value + b"\n", 1))
    with pytest.raises(PlyFormatError, match="unreadable vertex data"):
        load_ply(tmp_path / "a.ply")


def test_a_truthful_file_larger_than_the_memory_is_a_format_error(tmp_path):
    """A sparse file whose size matches its header: every size check passes, only the memory cannot hold it."""
    free = ply_module.available_memory()
    if free is None:
        pytest.skip("this system does not say how much memory is free")
    header = b"ply\nformat binary_little_endian 1.0\nelement vertex %d\n" + b"".join(
        b"property float %s\n" % name.encode() for name in REQUIRED) + b"end_header\n"  # fmt: skip
    n = free // (14 * 4) + 1
    path = tmp_path / "huge.ply"
    with open(path, "wb") as f:
        f.write(header % n)
        f.truncate(len(header % n) + n * 14 * 4)  # sparse: no disk space is used
    tracemalloc.start()
    with pytest.raises(PlyFormatError, match=rf"its {n} Gaussians need about .* GiB of memory to load, but only"):
        load_ply(path)
    assert tracemalloc.get_traced_memory()[1] < 1 << 20
    tracemalloc.stop()


def test_a_fifo_or_a_device_is_refused_without_waiting(tmp_path):
    fifo = tmp_path / "scene.ply"
    os.mkfifo(fifo)
    outcome = []

    def load():
        try:
            load_ply(fifo)
        except PlyFormatError as e:
            outcome.append(str(e))

    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # unblock the reader before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert outcome == [f"{fifo}: cannot read it as a .ply: it is a FIFO; give a .ply file"]
    with pytest.raises(PlyFormatError, match="it is a device; give a .ply file"):
        load_ply("/dev/zero")


def _fuzz_bases(tmp_path) -> dict[str, bytes]:
    """Valid files to damage: binary little- and big-endian, double precision, ascii (with a uchar column), SH 1."""
    bases = {}
    for name, degree, text, order, dtype in [
        ("le", 0, False, "<", "f4"), ("be", 0, False, ">", "f4"), ("f8", 0, False, "<", "f8"),
        ("ascii", 0, True, "=", "f4"), ("sh1", 1, False, "<", "f4"),
    ]:  # fmt: skip
        write_ply(tmp_path / "base.ply", inria_columns(particle(4, degree, seed=len(bases))), text, order, dtype)
        bases[name] = (tmp_path / "base.ply").read_bytes()
    columns = inria_columns(particle(3, 0, seed=9))
    data = np.empty(3, dtype=[*[(k, "f4") for k in columns], ("red", "u1")])
    for k, v in columns.items():
        data[k] = v
    data["red"] = 200
    plyfile.PlyData([plyfile.PlyElement.describe(data, "vertex")], text=True).write(str(tmp_path / "base.ply"))
    bases["ascii_uchar"] = (tmp_path / "base.ply").read_bytes()
    return bases


def _fuzz_cases(bases: dict[str, bytes], rng: random.Random):
    """(description, bytes) of damaged files; seeded."""
    counts = [b"0", b"-1", b"-4", b"abc", b"1e3", b"0x10", b"4.0", b"", b"9" * 19, b"9" * 5000, b"18446744073709551617"]
    types = [b"foo", b"list uchar float", b"list uchar", b"char", b"uchar", b"double", b"int64", b"float16"]
    values = [b"nan", b"inf", b"-inf", b"1e999", b"300", b"-5", b"abc", b"0x1p3", b"", b"1 2", b"--1", b"\xff"]
    for name, good in bases.items():
        end = good.index(b"end_header\n") + len(b"end_header\n")
        count_line = good[good.index(b"element vertex") : good.index(b"\n", good.index(b"element vertex"))]
        for offset in sorted(rng.sample(range(len(good)), 25)):
            yield f"{name}: truncated at {offset}", good[:offset]
        for _ in range(15):
            i, byte = rng.randrange(end), rng.randrange(256)
            yield f"{name}: header byte {i} = {byte}", good[:i] + bytes([byte]) + good[i + 1 :]
        for count in counts:
            yield f"{name}: count {count[:20]!r}", good.replace(count_line, b"element vertex " + count)
        for t in types:
            yield f"{name}: type {t!r}", good.replace(b"property float opacity", b"property " + t + b" opacity")
            yield f"{name}: extra {t!r}", good[: end - 11] + b"property " + t + b" extra\n" + good[end - 11 :]
        if name.startswith("ascii"):
            lines = good[end:].split(b"\n")
            for v in values:
                row, col = rng.randrange(len(lines) - 1), rng.randrange(14)
                words = lines[row].split(b" ")
                words[col if v != b"300" and v != b"-5" else -1] = v
                damaged = lines[:row] + [b" ".join(words)] + lines[row + 1 :]
                yield f"{name}: value {v!r} in row {row}", good[:end] + b"\n".join(damaged)
        else:
            for v in (np.nan, np.inf, -np.inf, 1e30, -1e30):
                i = end + 4 * rng.randrange((len(good) - end) // 4)
                yield f"{name}: {v} at byte {i}", good[:i] + np.array([v], "<f4").tobytes() + good[i + 4 :]
            for _ in range(6):
                i = rng.randrange(end, len(good))
                yield f"{name}: data byte {i} flipped", good[:i] + bytes([good[i] ^ 0xFF]) + good[i + 1 :]
        yield f"{name}: ascii declared", good.replace(b"binary_little_endian", b"ascii").replace(b"binary_big", b"ascii")
        yield f"{name}: big-endian declared", good.replace(b"binary_little_endian", b"binary_big_endian")


def test_fuzzed_files_load_cleanly_or_raise_ply_format_error(tmp_path):
    """A few hundred seeded damages of valid files: each ends in a clean load or PlyFormatError, nothing else."""
    cases = list(_fuzz_cases(_fuzz_bases(tmp_path), random.Random(12)))
    assert len(cases) > 400
    outcomes = {"loaded": 0, "refused": 0}
    path = tmp_path / "fuzz.ply"
    for description, data in cases:
        path.write_bytes(data)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                splats = load_ply(path, requires_grad=False)
        except PlyFormatError as e:
            assert str(e).startswith(f"{path}: "), (description, e)
            outcomes["refused"] += 1
        except Exception as e:  # noqa: BLE001  the point: nothing but PlyFormatError may escape
            pytest.fail(f"{description}: {type(e).__name__}: {e}")
        else:
            n = splats["means"].shape[0]
            assert all(torch.isfinite(v).all() and v.shape[0] == n for v in splats.values()), description
            outcomes["loaded"] += 1
    assert outcomes["loaded"] > 20 and outcomes["refused"] > 200, outcomes


def test_export_leaves_out_gaussians_that_exp_or_normalising_makes_infinite(tmp_path):
    n = 10
    p = particle(n, 0, edge_values=False)
    with torch.no_grad():
        p["scales"][2, 1] = 1e30  # finite in the .ply, +inf once exp() is taken
        p["quats"][7] = 0.0  # no direction: NaN once normalised
    save_ply(p, tmp_path / "p.ply")
    loaded = load_ply(tmp_path / "p.ply")
    assert loaded["scales"][2, 1] == 1e30  # the .ply keeps what it was given
    for fmt, suffix in (("splat", ".splat"), ("ply_compressed", ".compressed.ply")):
        with pytest.warns(RuntimeWarning, match=rf"left out 2 of {n} Gaussians that hold a NaN or Inf \(of exp"):
            export(loaded, tmp_path / f"p{suffix}", fmt)
    rows = np.frombuffer((tmp_path / "p.splat").read_bytes(), np.dtype([("f", "<f4", 6), ("b", "u1", 8)]))
    assert len(rows) == n - 2 and np.isfinite(rows["f"]).all()


def test_compressed_ply_is_recognised_not_misread(tmp_path):
    export(particle(20, 0), tmp_path / "c.compressed.ply", "ply_compressed")
    with pytest.raises(PlyFormatError, match="compressed PLY"):
        load_ply(tmp_path / "c.compressed.ply")


# ------------------------------------------------------------------------------------ export


def test_format_from_path():
    assert format_from_path("a/b.ply") == "ply"
    assert format_from_path("b.compressed.ply") == "ply_compressed"
    assert format_from_path("B.COMPRESSED.PLY") == "ply_compressed"
    assert format_from_path("x.ply.splat") == "splat"
    with pytest.raises(ConfigError, match=r"\.compressed\.ply"):
        format_from_path("b.obj")


def test_export_ply_matches_save_ply(tmp_path):
    p = particle(5, 1)
    export(p, tmp_path / "e.ply", format_from_path(tmp_path / "e.ply"))
    save_ply(p, tmp_path / "s.ply")
    assert (tmp_path / "e.ply").read_bytes() == (tmp_path / "s.ply").read_bytes()
    with pytest.raises(ConfigError, match="unknown export format"):
        export(p, tmp_path / "e.xyz", "xyz")


def test_splat_bytes_decode_to_the_particle(tmp_path):
    n = 40
    p = particle(n, 1)
    with torch.no_grad():
        p["opacities"][5] = float("nan")  # gsplat alone would then drop all 40 (notes/gsplat.md B9.2)
    with pytest.warns(RuntimeWarning, match="left out 1 of 40"):
        export(p, tmp_path / "p.splat", "splat")
    raw = (tmp_path / "p.splat").read_bytes()
    row = np.dtype([("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
    assert row.itemsize == 32 and len(raw) == 32 * (n - 1)
    rows = np.frombuffer(raw, row)
    keep = [i for i in range(n) if i != 5]
    means = p["means"].detach().numpy()[keep]
    # Rows are reordered (Morton); positions are stored exactly, so they identify the Gaussians.
    order = [int(np.flatnonzero((means == r).all(axis=1))[0]) for r in rows["pos"]]
    assert sorted(order) == list(range(n - 1))
    a = S.activate(p)
    rgb = S.sh0_to_rgb(p["sh0"][:, 0]).detach().clamp(0, 1).numpy()[keep][order]
    alpha = a.opacities.detach().numpy()[keep][order]
    quats = a.quats.detach().numpy()[keep][order]
    np.testing.assert_allclose(rows["scale"], a.scales.detach().numpy()[keep][order], rtol=1e-6)
    # uint8 quantisation truncates: stored = floor(v * 255), i.e. within one step below v.
    assert np.all(np.abs(rows["rgba"][:, :3] / 255.0 - rgb) <= 1 / 255 + 1e-6)
    assert np.all(np.abs(rows["rgba"][:, 3] / 255.0 - alpha) <= 1 / 255 + 1e-6)
    assert np.all(np.abs((rows["rot"].astype(np.float64) - 128) / 128 - quats) <= 1 / 128 + 1e-6)  # wxyz

    export(S.from_tensors(*(p[k][:0] for k in S.KEYS)), tmp_path / "empty.splat", "splat")
    assert (tmp_path / "empty.splat").read_bytes() == b""


def decode_compressed(path):
    """Positions [N, 3] and alphas [N] back from a compressed PLY (PlayCanvas's unpacking)."""
    data = plyfile.PlyData.read(str(path))
    chunk, vertex = data["chunk"].data, data["vertex"].data
    which = np.arange(len(vertex)) // 256
    packed = vertex["packed_position"].astype(np.int64)
    unit = np.stack([(packed >> 21) / 2047, ((packed >> 11) & 1023) / 1023, (packed & 2047) / 2047], axis=1)
    lo = np.stack([chunk[f"min_{c}"][which] for c in "xyz"], axis=1)
    hi = np.stack([chunk[f"max_{c}"][which] for c in "xyz"], axis=1)
    return lo + unit * (hi - lo), (vertex["packed_color"] & 255) / 255, hi - lo


@pytest.mark.parametrize("degree", [0, 3])
def test_compressed_ply_structure(tmp_path, degree):
    n = 300  # two chunks of 256
    p = particle(n, degree, edge_values=False)  # a 3e38 position would make its chunk's extent useless
    with torch.no_grad():
        p["opacities"][7] = -10.0  # sigmoid < 1/255: the format leaves it out
    export(p, tmp_path / "p.compressed.ply", "ply_compressed")
    data = plyfile.PlyData.read(str(tmp_path / "p.compressed.ply"))
    elements = [e.name for e in data.elements]
    assert elements == (["chunk", "vertex"] if degree == 0 else ["chunk", "vertex", "sh"])
    assert data["chunk"].count == 2 and len(data["chunk"].properties) == 18
    assert data["vertex"].count == n - 1
    assert [q.name for q in data["vertex"].properties] == ["packed_position", "packed_rotation", "packed_scale",
                                                           "packed_color"]  # fmt: skip
    if degree == 3:
        sh = data["sh"]
        assert sh.count == n - 1 and [q.name for q in sh.properties] == [f"f_rest_{i}" for i in range(45)]
        assert all(q.val_dtype == "u1" for q in sh.properties)

    positions, alphas, extent = decode_compressed(tmp_path / "p.compressed.ply")
    keep = [i for i in range(n) if i != 7]
    means = p["means"].detach().numpy()[keep].astype(np.float64)
    nearest = np.abs(positions[:, None, :] - means[None, :, :]).max(axis=2).argmin(axis=1)
    assert sorted(nearest) == list(range(n - 1))  # every kept Gaussian decodes closest to itself
    # 11/10/11-bit positions: error at most half a step of the chunk's extent per axis.
    err = np.abs(positions - means[nearest])
    assert np.all(err <= extent / np.array([2047, 1023, 2047]) / 2 + 1e-6)
    opacity = torch.sigmoid(p["opacities"]).detach().numpy()[keep][nearest]
    np.testing.assert_allclose(alphas, opacity, atol=0.5 / 255 + 1e-6)  # 8 bits, rounded


def test_compressed_ply_refuses_an_invisible_particle(tmp_path):
    p = particle(4, 0)
    with torch.no_grad():
        p["opacities"][:] = -10.0
    with pytest.raises(ConfigError, match="opacity above 1/255"):
        export(p, tmp_path / "p.compressed.ply", "ply_compressed")
    assert not (tmp_path / "p.compressed.ply").exists()


# ------------------------------------------------------------------------------------ images


def test_to_uint8_rounds_clamps_and_moves_channels_last():
    red = [[0.0, 1.0], [0.5, 2.0]]
    green = [[-1.0, float("nan")], [0.2, 0.998]]
    out = to_uint8(torch.tensor([[red, green, red]]))  # [1, 3, 2, 2]
    assert out.dtype == np.uint8 and out.shape == (1, 2, 2, 3)
    assert out[0, :, :, 0].tolist() == [[0, 255], [128, 255]]  # 0.5 * 255 = 127.5 rounds to 128
    assert out[0, :, :, 1].tolist() == [[0, 0], [51, 254]]  # clamped; NaN -> 0


def solid_images(colours: list[tuple[float, float, float]], h=4, w=3) -> torch.Tensor:
    return torch.tensor(colours)[:, :, None, None].expand(-1, -1, h, w).clone()  # [B, 3, H, W]


def test_contact_sheet_layout():
    colours = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0), (0.0, 0.0, 0.0)]
    sheet = contact_sheet(solid_images(colours))  # 5 images -> ceil(sqrt(5)) = 3 columns, 2 rows
    assert sheet.shape == (2 * 4 + 2, 3 * 3 + 2 * 2, 3) and sheet.dtype == np.uint8
    for i, c in enumerate(colours):
        top, left = (i // 3) * 6, (i % 3) * 5
        cell = sheet[top : top + 4, left : left + 3]
        assert (cell == np.array(c) * 255).all(), i
    assert (sheet[4:6, :] == GUTTER_VALUE).all()  # gutter between the rows
    assert (sheet[:, 3:5] == GUTTER_VALUE).all()  # gutter between columns 0 and 1
    assert (sheet[6:, 10:] == GUTTER_VALUE).all()  # the unused sixth cell

    row = contact_sheet(solid_images(colours[:2]), columns=4, gutter=1)  # columns capped at B
    assert row.shape == (4, 3 + 1 + 3, 3)
    assert (row[:, 3] == GUTTER_VALUE).all() and (row[:, 4:, 1] == 255).all()


def test_save_png_round_trips(tmp_path):
    sheet = contact_sheet(solid_images([(0.2, 0.4, 0.6), (1.0, 0.0, 0.5)]))
    save_png(sheet, tmp_path / "s.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "s.png").convert("RGB")), sheet)
    image = torch.rand(3, 5, 7)
    save_png(image, tmp_path / "i.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "i.png")), to_uint8(image[None])[0])


def test_save_gif_frames_loop_and_rate(tmp_path):
    frames = solid_images([(i / 5, 1 - i / 5, 0.5) for i in range(6)], h=8, w=8)
    save_gif(frames, tmp_path / "t.gif", fps=12)
    with Image.open(tmp_path / "t.gif") as gif:
        assert gif.n_frames == 6 and gif.is_animated
        assert gif.info["loop"] == 0
        assert gif.info["duration"] == 80  # 12 fps -> 8 centiseconds
        gif.seek(3)
        assert np.abs(np.asarray(gif.convert("RGB"))[0, 0].astype(int) - [153, 102, 128]).max() <= 2
    with pytest.raises(ConfigError, match="fps"):
        save_gif(frames, tmp_path / "fast.gif", fps=120)
    assert not (tmp_path / "fast.gif").exists()
