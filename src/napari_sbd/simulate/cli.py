"""``napari-sbd-simulate``: make a training set of clean HRTEM images of Pt/CeO2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from napari_sbd.core.units import PAPERS_PIXEL_SIZE_PM


def parse_range(text: str) -> list[float]:
    """``a:b:step`` (inclusive of b) or ``a,b,c`` -> list of floats."""
    try:
        if ":" in text:
            parts = [float(x) for x in text.split(":")]
            if len(parts) == 2:
                parts.append(1.0)
            a, b, step = parts
            if step <= 0 or b < a:
                raise ValueError
            n = round((b - a) / step)
            return [round(a + i * step, 6) for i in range(n + 1)]
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: use start:stop:step (nm, inclusive) or a comma list") from None


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser (units in every help text)."""
    p = argparse.ArgumentParser(
        prog="napari-sbd-simulate",
        description="Simulate clean HRTEM images (abTEM multislice) of faceted Pt "
        "nanoparticles on CeO2 (111) in [110], at the papers' microscope settings, as "
        "float32 TIFFs in counts per pixel plus metadata.csv. Resumable: run the same "
        "command again to finish an interrupted run. A folder holds one dataset: other "
        "defoci, microscope settings, --particle or --thickness-nm are refused there; "
        "--n-structures, --seed, --workers and --scheduler may change (more structures "
        "extend the dataset).",
    )
    p.add_argument("--out", required=True, help="dataset folder (created; resumed if present)")
    p.add_argument("--n-structures", type=int, default=10, help="number of structures (10)")
    p.add_argument("--defocus", type=parse_range, default=parse_range("0:20:1"),
                   help="C10 defoci in nm, start:stop:step or a,b,c (default 0:20:1; "
                   "positive = overfocus; white Pt columns near +6 nm)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first structure (0)")
    p.add_argument("--particle", choices=["1nm", "2nm", "3nm"], help="fix the particle size")
    p.add_argument("--thickness-nm", type=float, help="fix the support thickness, nm (3-6)")
    p.add_argument("--pixel-size-pm", type=float, default=PAPERS_PIXEL_SIZE_PM,
                   help=f"pixel size, pm ({PAPERS_PIXEL_SIZE_PM:g}, the papers')")
    p.add_argument("--dose", type=float, default=0.45,
                   help="vacuum dose, counts/pixel/frame (0.45)")
    p.add_argument("--cs-um", type=float, default=-13.0, help="C30 (Cs), micrometres (-13)")
    p.add_argument("--c5-mm", type=float, default=5.0, help="C50 (C5), millimetres (5)")
    p.add_argument("--focal-spread-nm", type=float, default=4.0,
                   help="focal spread (1/e half-width), nm (4)")
    p.add_argument("--vibration-pm", type=float, default=50.0, help="isotropic vibration, pm (50)")
    p.add_argument("--workers", type=int, help="processes (default: one per core)")
    p.add_argument("--scheduler", help="address of a dask.distributed scheduler to run on")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    from napari_sbd.simulate import require_simulation_extra

    try:
        require_simulation_extra()
    except ImportError as exc:
        print(f"napari-sbd-simulate: error: {exc}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    from napari_sbd.simulate.dataset import simulate_dataset
    from napari_sbd.simulate.imaging import ImagingParams

    fixed = {k: v for k, v in (("particle", args.particle), ("thickness_nm", args.thickness_nm))
             if v is not None}
    ip = ImagingParams(cs_um=args.cs_um, c5_mm=args.c5_mm, focal_spread_nm=args.focal_spread_nm,
                       vibration_pm=args.vibration_pm, pixel_size_pm=args.pixel_size_pm,
                       dose=args.dose)
    executor = None
    if args.scheduler:
        from distributed import Client

        executor = Client(args.scheduler).get_executor()
    bars: list = []  # created at the first progress call: errors found before it stay clean

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc="structures", unit="structure"))
        bars[0].n = done
        bars[0].refresh()

    try:
        n = simulate_dataset(args.out, args.n_structures, args.defocus, ip, seed=args.seed,
                             fixed=fixed, workers=args.workers, executor=executor,
                             progress=progress)
    except ValueError as exc:
        print(f"napari-sbd-simulate: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        from napari_sbd._cli import os_error_message

        print(os_error_message("napari-sbd-simulate", exc, "then run the same command again "
                               "(finished structures are kept)"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("napari-sbd-simulate: interrupted; run the same command again to resume",
              file=sys.stderr)
        return 130
    finally:
        for b in bars:
            b.close()
    print(f"{n} images in {args.out}/metadata.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
