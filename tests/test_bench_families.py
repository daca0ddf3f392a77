"""bench/bench_families.py --quick: a small prior at one small size per family runs on the CPU and prints, per
family asked for, a row of finite figures (the estimate beside the measurement) and one line for CUDA when there is
none. Three families keep it fast: an image latent, a video latent and pixels."""

import math
import subprocess
import sys
from pathlib import Path

import torch

from noisear.families import FAMILIES

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_families.py"
ASKED = ["flux", "wan2.2-5b", "chroma-radiance"]


def test_quick_mode_prints_a_row_of_figures_per_family_and_device():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--families", *ASKED], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    rows = [line.split("|")[1:-1] for line in lines if line.startswith("| ") and line.count("|") == 10]
    rows = [row for row in rows if row[0].strip() != "family"]  # the headers
    devices = 2 if torch.cuda.is_available() else 1
    assert [row[0].strip() for row in rows] == [FAMILIES[key].title for key in ASKED] * devices
    for row in rows:
        figures = [float(cell.replace(",", "")) for cell in row[3:]]  # patches, estimate and measured s, ratio, MiB
        assert all(math.isfinite(value) and value >= 0 for value in figures), row
        assert figures[0] > 0 and figures[2] > 0, row  # patches decoded, a draw took time
    wan = next(row for row in rows if row[0].strip() == FAMILIES["wan2.2-5b"].title)
    assert "frames" in wan[1] and wan[2].count("x") == 2  # a video latent: (T, H, W) cells
    if not torch.cuda.is_available():
        assert "cuda: no CUDA device here, skipped" in lines
