"""Reliability: bad inputs tried as a hostile user would, and what each one gets.

Every case runs the real command (a subprocess) or the public API on small
inputs in a scratch folder, and checks three things: the outcome is the one
promised (an exit code, an error naming the problem), no Python traceback is
shown, and nothing the user owns was deleted or changed. The table it writes,
docs/reliability.md, is the record of what was tried.

Usage::

    python benchmarks/reliability.py [--out docs/reliability.md]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import torch
from _common import DOCS, header

from napari_sbd.core.checkpoint import save_checkpoint
from napari_sbd.core.inference import default_model_path
from napari_sbd.core.models import BiasFreeUNet
from napari_sbd.core.noise import poisson_noise


@dataclass
class Outcome:
    code: int | None  # exit code (commands) or None (API: an exception or not)
    message: str  # first line of the error, or the result


def run(*argv: str) -> Outcome:
    """A command as a user runs it: its exit code and the first line of its error."""
    mod = {"denoise": "napari_sbd.denoise_cli", "train": "napari_sbd.training.cli",
           "simulate": "napari_sbd.simulate.cli"}[argv[0]]
    proc = subprocess.run([sys.executable, "-m", mod, *argv[1:]], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    err = proc.stderr.strip().splitlines()
    lines = [ln for ln in err if "error" in ln.lower() or "Traceback" in ln] or err[-1:]
    text = ("TRACEBACK: " if "Traceback" in proc.stderr else "") + (lines[0] if lines else "")
    return Outcome(proc.returncode, text)


def api(call: Callable[[], object]) -> Outcome:
    """A public function: the error it raised (type and message), or 'returned'."""
    try:
        call()
    except ValueError as exc:
        return Outcome(None, f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
    except Exception as exc:  # noqa: BLE001 - a foreign exception is exactly what is recorded
        return Outcome(None, f"TRACEBACK: {type(exc).__name__}: {exc}")
    return Outcome(None, "returned")


def tree(folder: Path) -> str:
    """Digest of every path and file content below ``folder`` (to prove nothing changed)."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
    return h.hexdigest()


def cases(tmp: Path) -> list[tuple[str, str, Callable[[], Outcome], str, Callable[[], bool]]]:
    """(area, bad input, run it, expected text, still-intact check) for every case."""
    rng = np.random.default_rng(0)
    movie = poisson_noise(np.full((3, 96, 96), 0.45), rng=rng).astype(np.uint16)
    proj = tmp / "proj"
    (proj / "sub").mkdir(parents=True)
    tifffile.imwrite(proj / "movie.tif", movie)
    (proj / "notes.txt").write_text("x")
    proj_digest = tree(proj)
    mov = str(proj / "movie.tif")
    torch.manual_seed(0)
    tiny = tmp / "tiny.pt"
    save_checkpoint(tiny, BiasFreeUNet(scales=2, base=4).eval(), architecture="bf_unet",
                    params={"scales": 2, "base": 4}, dose=0.45, pixel_size_pm=6.1, contrast="white")
    damaged = tmp / "damaged.pt"
    data = bytearray(default_model_path().read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
    damaged.write_bytes(bytes(data))
    nan_model = tmp / "nan.pt"
    net = BiasFreeUNet(scales=2, base=4)
    with torch.no_grad():
        next(iter(net.parameters())).fill_(float("nan"))
    save_checkpoint(nan_model, net, architecture="bf_unet", params={"scales": 2, "base": 4},
                    dose=0.45, pixel_size_pm=6.1, contrast="white")
    evil = tmp / "evil.pt"

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"format": "napari-sbd-checkpoint", "x": Evil()}, evil)
    huge = tmp / "huge.pt"
    payload = torch.load(tiny, weights_only=True)
    payload["metadata"]["params"] = {"scales": 2, "base": 10**6}
    torch.save(payload, huge)
    foreign = tmp / "foreign"
    foreign.mkdir()
    (foreign / "data.txt").write_text("mine")
    a_file = tmp / "result.tif"
    a_file.write_bytes(b"user data")
    ours = tmp / "ours.zarr"
    link = tmp / "link.zarr"
    offset = tmp / "offset.tif"
    tifffile.imwrite(offset, (movie + 100).astype(np.uint16))
    series = tmp / "series.tif"
    tifffile.imwrite(series, np.stack([movie, movie]))
    dropped = tmp / "dropped.tif"  # a damaged frame mid-movie: NaN in frame 1
    bad_movie = movie.astype(np.float32)
    bad_movie[1, :8] = np.nan
    tifffile.imwrite(dropped, bad_movie)
    rgb = tmp / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    sim = tmp / "sim"
    sim.mkdir()
    (sim / "dataset.json").write_text(json.dumps({"defoci_nm": [6.0], "imaging": {
        "pixel_size_pm": 6.1}, "fixed": {}}))

    def intact() -> bool:
        return tree(proj) == proj_digest

    def make_ours_and_link() -> Outcome:
        run("denoise", mov, "-o", str(ours), "--model", str(tiny), "--quiet")
        link.symlink_to(ours, target_is_directory=True)
        return run("denoise", mov, "-o", str(link), "--model", str(tiny), "--quiet", "--columns",
                   "--overwrite")

    dn = ("denoise", mov, "--model", str(tiny), "--quiet")
    from napari_sbd.core.columns import detect_columns
    from napari_sbd.core.inference import load_model
    from napari_sbd.core.likelihood import column_log_likelihood_ratios

    y = poisson_noise(np.full((64, 64), 0.45), rng=rng)
    den = np.full((64, 64), 0.45, np.float32)
    one = np.array([[32.0, 32.0]])
    return [
        ("denoise", "`-o` the folder holding the input, `--overwrite`",
         lambda: run(*dn, "-o", str(proj), "--overwrite"), "--overwrite refused", intact),
        ("denoise", "`-o` a folder of the user's, `--overwrite`",
         lambda: run(*dn, "-o", str(foreign), "--overwrite"), "--overwrite refused",
         lambda: (foreign / "data.txt").read_text() == "mine"),
        ("denoise", "`-o` an existing file, `--overwrite`",
         lambda: run(*dn, "-o", str(a_file), "--overwrite"), "--overwrite refused",
         lambda: a_file.read_bytes() == b"user data"),
        ("denoise", "`-o` a symbolic link to a store, `--overwrite`", make_ours_and_link,
         "symbolic link", lambda: link.is_symlink() and (ours / ".sbd" / "STORE").exists()),
        ("denoise", "model file with 64 bytes flipped", lambda: run(
            "denoise", mov, "-o", str(tmp / "d1.zarr"), "--model", str(damaged), "--quiet"),
         "damaged", lambda: not (tmp / "d1.zarr").exists()),
        ("denoise", "model with NaN weights", lambda: run(
            "denoise", mov, "-o", str(tmp / "d2.zarr"), "--model", str(nan_model), "--quiet"),
         "NaN or infinite values on a test frame", lambda: not (tmp / "d2.zarr").exists()),
        ("denoise", "model file holding pickled code", lambda: run(
            "denoise", mov, "-o", str(tmp / "d3.zarr"), "--model", str(evil), "--quiet"),
         "contains code", lambda: not (tmp / "d3.zarr").exists()),
        ("denoise", "`--tile 0`", lambda: run(*dn, "-o", str(tmp / "d4.zarr"), "--tile", "0"),
         "need >= 64", lambda: not (tmp / "d4.zarr").exists()),
        ("denoise", "`--vacuum-level -1`", lambda: run(*dn, "-o", str(tmp / "d5.zarr"),
                                                       "--vacuum-level", "-1"),
         "need > 0", lambda: not (tmp / "d5.zarr").exists()),
        ("denoise", "`--pixel-size 0`", lambda: run(*dn, "-o", str(tmp / "d8.zarr"),
                                                    "--pixel-size", "0"),
         "need > 0", lambda: not (tmp / "d8.zarr").exists()),
        ("denoise", "a half-done store resumed with another `--tile`", lambda: (
            run(*dn, "-o", str(tmp / "d9.zarr"), "--tile", "1024"),
            run(*dn, "-o", str(tmp / "d9.zarr")))[1],
         "made with --tile 1024, now 2048", lambda: (tmp / "d9.zarr" / ".sbd").is_dir()),
        ("denoise", "uint16 frames with a 100-count offset", lambda: run(
            "denoise", str(offset), "-o", str(tmp / "d6.zarr"), "--model", str(tiny), "--quiet"),
         "do not look like counts", lambda: not (tmp / "d6.zarr").exists()),
        ("denoise", "a 4-D file (two movies) without `--block`", lambda: run(
            "denoise", str(series), "-o", str(tmp / "d10.zarr"), "--model", str(tiny), "--quiet"),
         "choose one with --block", lambda: not (tmp / "d10.zarr").exists()),
        ("denoise", "a NaN frame mid-movie", lambda: run(
            "denoise", str(dropped), "-o", str(tmp / "d11.zarr"), "--model", str(tiny), "--quiet"),
         "--skip-bad-frames", lambda: (tmp / "d11.zarr" / ".sbd" / "done" / "000000").exists()),
        ("denoise", "an RGB image", lambda: run(
            "denoise", str(rgb), "-o", str(tmp / "d7.zarr"), "--model", str(tiny), "--quiet"),
         "RGB", lambda: not (tmp / "d7.zarr").exists()),
        ("train", "`--val-fraction 1.5`", lambda: run(
            "train", str(sim), "--out", str(tmp / "t1"), "--val-fraction", "1.5"),
         "need > 0 and < 1", lambda: not (tmp / "t1").exists()),
        ("train", "`--dose 1e-9`", lambda: run("train", str(sim), "--out", str(tmp / "t2"),
                                               "--dose", "1e-9"),
         "out of range", lambda: not (tmp / "t2").exists()),
        ("train", "`--out` an existing file", lambda: run("train", str(proj), "--out",
                                                          str(a_file), "--val-fraction", "0.5"),
         "is a file", lambda: a_file.read_bytes() == b"user data"),
        ("simulate", "`--out` a dataset made at another pixel size", lambda: run(
            "simulate", "--out", str(sim), "--pixel-size-pm", "8", "--defocus", "6",
            "--n-structures", "1"), "other options", lambda: len(list(sim.iterdir())) == 1),
        ("simulate", "`--out` an existing file", lambda: run(
            "simulate", "--out", str(a_file), "--n-structures", "1"), "is a file",
         lambda: a_file.read_bytes() == b"user data"),
        ("API", "checkpoint asking for `base=10**6` (36 TB)",
         lambda: api(lambda: load_model(huge)), "do not match", lambda: True),
        ("API", "LLR with `pixel_size_pm=0`", lambda: api(
            lambda: column_log_likelihood_ratios(y, den, one, 0.45, pixel_size_pm=0)),
         "pixel_size_pm must be a positive", lambda: True),
        ("API", "LLR with `radius_a=1e4`", lambda: api(
            lambda: column_log_likelihood_ratios(y, den, one, 0.45, radius_a=1e4)),
         "larger than", lambda: True),
        ("API", "LLR with a negated denoised frame", lambda: api(
            lambda: column_log_likelihood_ratios(y, -den, one, 0.45)), "positive mean",
         lambda: True),
        ("API", "`detect_columns` on a (0, 0) array", lambda: api(
            lambda: detect_columns(np.zeros((0, 0)))), "too small", lambda: True),
        ("API", "float64 frame with a value of 1e300", lambda: api(
            lambda: load_model(tiny).denoise(np.where(y > 0, 1e300, 0.0))),
         "beyond what float32 holds", lambda: True),
        ("API", "`poisson_noise(dose='abc')`", lambda: api(
            lambda: poisson_noise(y, dose="abc")), "must be a number", lambda: True),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DOCS / "reliability.md")
    args = parser.parse_args()
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for area, what, call, expect, check in cases(Path(d)):
            out = call()
            out.message = out.message.replace(str(Path(d).resolve()), "SCRATCH").replace(d, "SCRATCH")
            ok = (expect in out.message and "TRACEBACK" not in out.message
                  and (out.code is None or out.code in (1, 2)) and check())
            rows.append((area, what, out, expect, ok))
            print(f"{'ok  ' if ok else 'FAIL'} {area}: {what}: {out.code} {out.message}",
                  file=sys.stderr)
    n_ok = sum(r[-1] for r in rows)
    lines = header("Reliability: bad inputs and what each gets", sys.argv[1:],
                   time.perf_counter() - t0) + [
        ("Each row runs the real command (a subprocess) or the public API on a small input in a "
        "scratch folder. *Holds* means: the outcome contains the expected text, no traceback "
        "was shown, the exit code is 1 (input/output) or 2 (bad input or option), and "
        "everything the user owned is unchanged (the folder holding the input is compared "
        "byte for byte)."),
        "",
        f"{n_ok} of {len(rows)} hold.",
        "",
        "| area | bad input | exit | what the user is told (first line) | holds |",
        "|---|---|---|---|---|",
    ]
    for area, what, out, _expect, ok in rows:
        msg = out.message.replace("|", "\\|")
        msg = msg if len(msg) <= 220 else msg[:217] + "..."
        lines.append(f"| {area} | {what} | {'-' if out.code is None else out.code} | {msg} "
                     f"| {'yes' if ok else '**NO**'} |")
    lines += ["", ("Also covered by the test suite (tests/test_properties.py): any array (shape, "
              "dtype, NaN, infinities, huge values) passed to the public API gives a result of "
              "the right shape or one of our errors, and the caller's array is never modified."),
              ""]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)
    if n_ok != len(rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
