"""Training step time on this machine: float32 against the mixed precision the trainer uses.

    python benchmarks/train_step.py [--repeats 5]

One optimiser step (forward, backward, Adam) on a batch of 8 patches of
256x256, as ``napari-sbd-train`` takes it, for the architecture study's
networks, in float32 (the trainer's ``--no-amp``: contiguous layout) and in
the trainer's default arithmetic on this machine (``mixed_precision_dtype``:
bfloat16 autocast and channels-last on CPUs with native bfloat16, float32
elsewhere). Reports the median of ``--repeats`` steps after two warm-ups,
and the float32 network's output against the mixed one's on the same input
(how far one bfloat16 forward pass is from float32). Writes
docs/train-step.md.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch
from _common import header, write_page

from napari_sbd.core.models import build_model
from napari_sbd.training.loop import cpu_has_native_bfloat16, mixed_precision_dtype

NETWORKS = {  # the architecture study's candidates (benchmarks/architecture_study.py)
    "s4-c32-u2": dict(scales=4, base=32, unshuffle=2),
    "s4-c64-u4": dict(scales=4, base=64, unshuffle=4),
    "s5-c64-u4": dict(scales=5, base=64, unshuffle=4),
    "s5-c32-u2": dict(scales=5, base=32, unshuffle=2),
    "s6-c32-u2": dict(scales=6, base=32, unshuffle=2),
}


def step_seconds(params: dict, dtype: torch.dtype | None, repeats: int) -> tuple[float, torch.Tensor]:
    """Median seconds per training step, and the output of the first forward pass."""
    torch.manual_seed(0)
    net = build_model("bf_unet", **params, centre_sigma=6.0, activation="leaky_relu", norm="none")
    fmt = torch.channels_last if dtype is not None else torch.contiguous_format
    net = net.to(memory_format=fmt)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(1)
    y = torch.rand(8, 1, 256, 256, generator=gen) * 0.9
    x = torch.poisson(y, generator=gen).to(memory_format=fmt)
    times, first = [], None
    for _ in range(repeats + 2):
        t0 = time.perf_counter()
        ctx = torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with ctx:
            out = net(x).float()
        if first is None:
            first = out.detach().clone()
        loss = torch.mean((out - y) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[2:])), first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    t_start = time.monotonic()
    mixed = mixed_precision_dtype(torch.device("cpu"))
    label = "bfloat16 + channels-last" if mixed is not None else "float32 (no native bfloat16)"
    rows = []
    for name, params in NETWORKS.items():
        t32, out32 = step_seconds(params, None, args.repeats)
        tmix, outmix = step_seconds(params, mixed, args.repeats) if mixed else (t32, out32)
        rel = float((outmix - out32).abs().max() / out32.abs().max())
        rows.append(f"| {name} | {t32:.3f} | {tmix:.3f} | {t32 / tmix:.2f}x | {rel:.1e} |")
        print(rows[-1], flush=True)
    lines = [
        *header("Training step: float32 against mixed precision", [f"--repeats {args.repeats}"],
                time.monotonic() - t_start),
        (f"CPU: {torch.backends.cpu.get_cpu_capability()}, native bfloat16: "
         f"{cpu_has_native_bfloat16()}; the trainer's default here: {label}. One step = "
         "forward, backward and Adam on 8 patches of 256x256 (median of "
         f"{args.repeats} after two warm-ups)."),
        "",
        ("| network | float32 (s/step) | trainer's default (s/step) | speed-up | largest output "
         "difference (relative) |"),
        "|---|---|---|---|---|",
        *rows,
        "",
        ("The output difference is one forward pass of the freshly initialised network in "
         "bfloat16 autocast against float32, relative to the largest output: the arithmetic's "
         "own error. Training keeps the weights, Adam's state, the loss and validation in "
         "float32; checkpoints are float32, and inference runs in float32."),
    ]
    write_page("train-step.md", lines)


if __name__ == "__main__":
    main()
