"""``napari-sbd-denoise``: denoise a long movie headless, resumably, in bounded memory."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from napari_sbd._cli import number

EPILOG = """\
examples:
  napari-sbd-denoise movie.tif -o movie_denoised.zarr
  napari-sbd-denoise movie.tif -o movie_denoised.zarr --columns --likelihood
  # killed? run the same command again: it continues where it stopped
  # share a movie between processes/GPUs/cluster jobs: same OUTPUT, disjoint ranges
  napari-sbd-denoise movie.tif -o out.zarr --frames 0:500 --device cuda:0 &
  napari-sbd-denoise movie.tif -o out.zarr --frames 500:1000 --device cuda:1 &

The output is a zarr store: open it in napari (File > Open, or napari out.zarr/denoised)
or in Python with zarr.open_group("out.zarr")["denoised"].
"""


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser."""
    p = argparse.ArgumentParser(
        prog="napari-sbd-denoise",
        description="Denoise every frame of an in situ movie with a simulation-trained network, "
        "into a new zarr store (resumable; memory does not grow with the number of frames).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", help="TIFF stack (memory-mapped), MRC, DM3/DM4, EMD or SER, in counts")
    p.add_argument("-o", "--output", required=True, help="new zarr store to write (e.g. out.zarr)")
    p.add_argument("--model", default="auto",
                   help="'auto' (the bundled model for the movie's dose, pixel size and contrast: "
                   "'default' near 6.1 pm from 0.4 counts/pixel up to where the others win "
                   "(frames above its 0.45 are split into parts at it), 'black' there for dark "
                   "columns, elsewhere 'envelope' or 'high-dose'; above 0.45 counts/pixel near "
                   "6.1 pm also the blends; of these the one that better predicts counts held "
                   "out of the first frame; the choice is printed), "
                   "'default' (bundled; best at 0.45 counts/pixel, 6.1 pm, white contrast), "
                   "'black' (bundled; the same point, black contrast), 'envelope' (bundled; "
                   "0.1-5 counts/pixel, 4.8-10.5 pm), 'high-dose' (bundled; a larger network "
                   "over the same range, best at high doses), 'blend-50' or 'blend-70' (the "
                   "default and the high-dose model averaged, 50/50 and 30/70) or a checkpoint "
                   "path")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    p.add_argument("--frames", help="START:STOP range of frames for this process (default: all)")
    p.add_argument("--columns", action="store_true",
                   help="also write columns.csv (and columns.h5): every column of every frame "
                   "linked through the movie: track, frame, position (nm, px) and its error (pm), "
                   "sigma (A), peak, contrast, intensity, LLR and class")
    p.add_argument("--spacing", type=number(float, above=0, unit="Angstrom"),
                   help="column spacing in Angstrom (default: read from each frame)")
    p.add_argument("--polarity", choices=["auto", "bright", "dark"], default="auto",
                   help="bright or dark columns (default: decided from each frame)")
    detect, link = _defaults()
    p.add_argument("--column-threshold", type=number(float, at_least=0, below=1),
                   default=detect["threshold"],
                   help="a column's contrast relative to the frame's strong columns, 0-1 "
                   "(default %(default)s)")
    p.add_argument("--max-displacement", type=number(float, above=0, unit="Angstrom"),
                   default=link["max_displacement_a"],
                   help="largest move of a column between frames, Angstrom (default %(default)s)")
    p.add_argument("--memory", type=number(int, at_least=0, unit="frames"),
                   default=link["memory"],
                   help="frames a column may be missing and keep its track (default %(default)s)")
    p.add_argument("--likelihood", action="store_true",
                   help="also write the LLR map stack (llr_map); implies --columns")
    p.add_argument("--vacuum-level", type=number(float, above=0, unit="counts/pixel"),
                   help="vacuum counts/pixel/frame for the LLRs (default: found in each frame)")
    p.add_argument("--block", type=number(int, at_least=0, unit=""),
                   help="the movie to denoise in a 4-D (series, T, H, W) file, from 0")
    p.add_argument("--pixel-size", type=number(float, above=0, unit="pm"),
                   help="the movie's pixel size in pm, instead of the file's (needed where the "
                   "file records none: a plain TIFF, an MRC with a bad header)")
    # core.inference.DEFAULT_TILE, not imported: --help must not wait for torch
    p.add_argument("--tile", type=number(int, at_least=64, unit="pixels"), default=2048,
                   help="inference tile side in pixels (2048; smaller uses less memory and more "
                   "time, the result is the same)")
    p.add_argument("--offset", type=float,
                   help="detector offset (dark level) in the file's units, subtracted first "
                   "(default: the file's electron calibration where it has one, else 0)")
    p.add_argument("--electrons-per-count", type=number(float, above=0),
                   help="electrons per unit of the file, i.e. 1 / gain (default: the file's "
                   "electron calibration where it has one, else 1: counted data)")
    p.add_argument("--quality", choices=["fast", "best"], default="fast",
                   help="best: average the network over the 8 rotations and flips of each frame "
                   "(about +0.5 dB, 8x the time); default fast")
    p.add_argument("--skip-bad-frames", action="store_true",
                   help="leave a frame that cannot be denoised (NaN, negative or not counts: a "
                        "damaged or dropped frame) empty (NaN, no columns) and go on; without it "
                        "such a frame stops the job there (the frames before it are kept)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing OUTPUT that is not a resumable run of this job")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from tqdm import tqdm

    from napari_sbd.core.batch import BatchError, denoise_movie

    command = shlex.join(["napari-sbd-denoise", *argv])
    bar = tqdm(total=0, unit="frame", desc="denoising", disable=args.quiet, file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        res = denoise_movie(
            args.input, args.output, model=args.model, device=args.device, frames=args.frames,
            columns=args.columns, likelihood=args.likelihood, vacuum_level=args.vacuum_level,
            tile_size=args.tile, overwrite=args.overwrite, command=command, progress=progress,
            ensemble=args.quality == "best", offset=args.offset,
            electrons_per_count=args.electrons_per_count, pixel_size_pm=args.pixel_size,
            block=args.block, skip_bad_frames=args.skip_bad_frames,
            **_analysis_options(args),
        )
    except (BatchError, ValueError) as exc:
        bar.close()
        print(f"napari-sbd-denoise: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError as exc:  # even the smallest tiles did not fit (see Denoiser._run_tiles)
        bar.close()
        print(f"napari-sbd-denoise: error: {exc}; then run the same command again: finished "
              "frames are kept (a smaller --tile is tried by itself)", file=sys.stderr)
        return 1
    except OSError as exc:
        bar.close()
        from napari_sbd._cli import os_error_message

        print(os_error_message("napari-sbd-denoise", exc, "then run the same command again: "
                               "finished frames are kept"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        bar.close()
        print("napari-sbd-denoise: interrupted; run the same command again to continue "
              "(finished frames are kept)", file=sys.stderr)
        return 130
    bar.close()
    if res.model_choice:
        print(f"napari-sbd-denoise: {res.model_choice}", file=sys.stderr)
    if res.dose_span is not None:
        lo, hi = res.dose_span
        print(f"napari-sbd-denoise: dose {lo:.3g}-{hi:.3g} counts/pixel per frame (each frame's "
              "mean; the store's 'dose' array has every frame's)", file=sys.stderr)
    elif res.dose_estimate is not None:
        print(f"napari-sbd-denoise: the input has {res.dose_estimate:.3g} counts/pixel/frame "
              "on average (first frames)", file=sys.stderr)
    for w in res.warnings:
        print(f"napari-sbd-denoise: warning: {w}", file=sys.stderr)
    state = "complete" if res.complete else "INCOMPLETE (other frame ranges still to do)"
    print(f"{res.output}: {res.frames_done_now} frames denoised now, {res.frames_skipped} already "
          f"done, {len(res.bad_frames)} left empty (bad); store {state}")
    return 0


def _defaults() -> tuple[dict[str, Any], dict[str, Any]]:
    """Defaults of detect_columns and link_columns, read from their signatures (one source)."""
    from napari_sbd.core.columns import detection_defaults, keyword_defaults
    from napari_sbd.core.tracking import link_columns

    return detection_defaults(), keyword_defaults(link_columns)


def _analysis_options(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Return the detection and linking options the user changed (a store records only those)."""
    detect_d, link_d = _defaults()
    detect = {"spacing_a": args.spacing, "polarity": args.polarity,
              "threshold": args.column_threshold}
    link = {"max_displacement_a": args.max_displacement, "memory": args.memory}
    return {"detect": {k: v for k, v in detect.items() if v != detect_d[k]},
            "link": {k: v for k, v in link.items() if v != link_d[k]}}


if __name__ == "__main__":
    sys.exit(main())
