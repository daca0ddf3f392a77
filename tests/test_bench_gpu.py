"""bench/bench_gpu.py: without a GPU it says so in one line and exits 0; --dry-run runs every part of the
prior's benchmark at a tiny size on the CPU (the ComfyUI render part is dry-run by hand with ComfyUI's Python:
docs/testing-and-benchmarks.md)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_gpu.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="there is a GPU here: the benchmark would run")
def test_without_a_gpu_it_skips_in_one_line():
    result = run()
    assert result.returncode == 0 and not result.stderr
    assert result.stdout.strip().splitlines() == [
        "bench_gpu: skipped, no CUDA GPU here (torch.cuda.is_available() is False); --dry-run checks the script on the CPU"
    ]


def test_dry_run_times_every_dtype_batch_and_size_at_a_tiny_size():
    result = run("--dry-run")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith(("| fp32", "| bf16"))]
    assert len(rows) == 2 * 2 * 2  # dtypes x batches x sizes
    assert sum("sliding window over" in row for row in rows) == 4


def test_a_path_that_is_not_comfyui_is_refused_clearly(tmp_path):
    result = run("--dry-run", "--comfyui", str(tmp_path))
    assert result.returncode != 0 and "not a ComfyUI checkout" in result.stderr
