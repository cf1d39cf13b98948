"""benchmarks/training_curves.py: the equal-budget table read from training logs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "training_curves.py"


def _log(run: Path, rows: list[tuple[int, float, str]]) -> None:
    run.mkdir()
    lines = ["epoch,val_psnr,patches_seen,cpu_seconds"]
    lines += [f"{i + 1},{psnr},{patches},{cpu}" for i, (patches, psnr, cpu) in enumerate(rows)]
    (run / "log.csv").write_text("\n".join(lines) + "\n")


def _table(*args: str) -> list[str]:
    out = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if line.startswith("|")]


def test_cpu_axis_reads_the_epoch_at_or_before_each_budget(tmp_path):
    # a: fast per CPU second; b: more patches per CPU second but less per patch
    _log(tmp_path / "a", [(480, 20.0, "600"), (960, 22.0, "1200"), (1440, 23.0, "1800")])
    _log(tmp_path / "b", [(960, 19.0, "600"), (1920, 21.5, "1200")])
    header, _, a, b = _table(f"a={tmp_path / 'a'}", f"b={tmp_path / 'b'}", "--x", "cpu",
                             "--at", "10,15,25")
    assert header.startswith("| run | 10 CPU min | 15 CPU min | 25 CPU min |")
    assert a == "| a | 20.00 | 20.00 | 22.00 | 23.00 (30) |"
    assert b == "| b | 19.00 | 19.00 | - | 21.50 (20) |"  # b did not reach 25 minutes
    # by patches the same logs read the other way round at 960 patches
    _, _, a, b = _table(f"a={tmp_path / 'a'}", f"b={tmp_path / 'b'}", "--at", "960")
    assert a.startswith("| a | 22.00 |") and b.startswith("| b | 19.00 |")


def test_a_log_without_cpu_seconds_is_named(tmp_path):
    _log(tmp_path / "old", [(480, 20.0, "")])
    proc = subprocess.run([sys.executable, str(BENCH), f"old={tmp_path / 'old'}", "--x", "cpu"],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "cpu_seconds" in proc.stderr and "--x patches" in proc.stderr
