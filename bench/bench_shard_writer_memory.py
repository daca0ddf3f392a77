"""What the Dataset Collector's writer holds in memory at the widgets' largest shard size: the peak
resident memory while appending SDXL-sized samples, against the writer's byte budget.

    python bench/bench_shard_writer_memory.py [--samples 640] [--shard-size 4096] [--batch 8]

Appends ``samples`` samples of SDXL size at 1024x1024 px (text [77, 2048] fp32 + mask, noise
[4, 128, 128] fp32: about 0.9 MB each) in batches of ``batch`` (as the collector does) to a
ShardWriter with ``shard_size`` samples per shard and the default byte budget
(``noisear.train.data.SHARD_BYTES``), in a temporary folder. Prints the samples per written shard,
the peak resident memory above the start (Linux VmHWM - VmRSS at start) and what the old count-only
rule would have held (shard_size samples). Figures only, no pass/fail.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from noisear.train import data  # noqa: E402

TEXT, NOISE = (77, 2048), (4, 128, 128)


def status_mib(field: str) -> float:
    """A /proc/self/status memory field (VmRSS, VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=640)
    parser.add_argument("--shard-size", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    sample_bytes = 5 * TEXT[0] * TEXT[1] + 4 * NOISE[0] * NOISE[1] * NOISE[2] + 16
    text, noise = torch.randn(args.batch, *TEXT), torch.randn(args.batch, *NOISE)
    start = status_mib("VmRSS")
    with tempfile.TemporaryDirectory() as folder:
        with data.ShardWriter(folder, data.DatasetInfo(source_model="bench"), shard_size=args.shard_size) as writer:
            for first in range(0, args.samples, args.batch):
                writer.append(text, noise, [first] * args.batch, list(range(first, first + args.batch)))
        counts = [shard.count for shard in data.ShardDataset(folder).shards]
    peak = status_mib("VmHWM") - start
    print(
        f"sample {sample_bytes / 2**20:.2f} MiB; budget {data.SHARD_BYTES / 2**20:.0f} MiB -> "
        f"{writer.capacity} samples per full shard (shard_size {args.shard_size})"
    )
    print(f"shards written: {len(counts)} holding {counts}")
    print(
        f"peak resident memory above start: {peak:.0f} MiB "
        f"(count-only rule would buffer {args.shard_size * sample_bytes / 2**30:.1f} GiB before the first write)"
    )


if __name__ == "__main__":
    main()
