"""Peak RAM and time of `noisear.load` for a published-size SDXL checkpoint (.safetensors and .pth).

    python bench/bench_load.py [--dir DIR]

Writes both files (random weights, ~432 MiB each) to a temporary folder, then loads each in a fresh
Python process and reports that child's peak resident memory (getrusage ru_maxrss) above its
resident memory just before the load (torch and noisear imported), as a ratio to the weights'
bytes. Target: about 1.2x or less. Figures only, no pass/fail.

This script itself imports neither torch nor noisear: a child's ru_maxrss starts at the RSS of the
process it was forked from, so the parent stays small and the files are written by a child too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WRITE = """
import sys, torch, noisear
torch.manual_seed(0)
model = noisear.NoiseAR(noisear.NoiseARConfig())
noisear.save(model, sys.argv[1] + "/model.safetensors")
torch.save(model.state_dict(), sys.argv[1] + "/model.pth")
print(sum(t.numel() * t.element_size() for t in model.state_dict().values()))
"""

LOAD = """
import json, os, resource, sys, time
import torch, noisear
before = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
start = time.perf_counter()
model = noisear.load(sys.argv[1])
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"before": before, "peak": peak, "seconds": seconds, "variant": model.config.variant}))
"""


def child(code: str, *args: str) -> str:
    """Run ``code`` in a fresh interpreter that imports noisear from this checkout; its last stdout line."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    return done.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to write the two files (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        weight_bytes = int(child(WRITE, folder))
        print(f"published-size SDXL checkpoint: {weight_bytes / 2**20:.0f} MiB of fp32 weights")
        for name in ("model.safetensors", "model.pth"):
            figures = json.loads(child(LOAD, str(Path(folder) / name)))
            extra = figures["peak"] - figures["before"]
            print(
                f"{Path(name).suffix:<13} {figures['variant']} load {figures['seconds']:.2f} s; peak RSS "
                f"{figures['peak'] / 2**20:.0f} MiB = {figures['before'] / 2**20:.0f} MiB before the load + "
                f"{extra / 2**20:.0f} MiB = {extra / weight_bytes:.2f}x the weights (target <= ~1.2x)"
            )


if __name__ == "__main__":
    main()
