"""``napari-sbd-denoise``: denoise a long movie headless, resumably, in bounded memory."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

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
    p.add_argument("--model", default="default",
                   help="'default' (bundled; best at 0.45 counts/pixel, 6.1 pm), 'envelope' (bundled; "
                   "0.1-5 counts/pixel, 4.8-10.5 pm) or a checkpoint path")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    p.add_argument("--frames", help="START:STOP range of frames for this process (default: all)")
    p.add_argument("--columns", action="store_true",
                   help="also write columns.csv: frame, row, col (px), sigma (A), peak, contrast, LLR")
    p.add_argument("--likelihood", action="store_true",
                   help="also write the LLR map stack (llr_map); implies --columns")
    p.add_argument("--vacuum-level", type=number(float, above=0, unit="counts/pixel"),
                   help="vacuum counts/pixel/frame for the LLRs (default: found in each frame)")
    p.add_argument("--tile", type=number(int, at_least=64, unit="pixels"), default=1024,
                   help="inference tile side in pixels (1024)")
    p.add_argument("--offset", type=float, default=0.0,
                   help="detector offset (dark level) in the file's units, subtracted first "
                   "(default 0: counted data)")
    p.add_argument("--electrons-per-count", type=number(float, above=0), default=1.0,
                   help="electrons per unit of the file, i.e. 1 / gain (default 1: counted data)")
    p.add_argument("--quality", choices=["fast", "best"], default="fast",
                   help="best: average the network over the 8 rotations and flips of each frame "
                   "(about +0.5 dB, 8x the time); default fast")
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
            electrons_per_count=args.electrons_per_count,
        )
    except (BatchError, ValueError) as exc:
        bar.close()
        print(f"napari-sbd-denoise: error: {exc}", file=sys.stderr)
        return 2
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
    if res.dose_estimate is not None:
        print(f"napari-sbd-denoise: the input has {res.dose_estimate:.3g} counts/pixel/frame "
              "on average (first frames)", file=sys.stderr)
    for w in res.warnings:
        print(f"napari-sbd-denoise: warning: {w}", file=sys.stderr)
    state = "complete" if res.complete else "INCOMPLETE (other frame ranges still to do)"
    print(f"{res.output}: {res.frames_done_now} frames denoised now, {res.frames_skipped} already "
          f"done; store {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
