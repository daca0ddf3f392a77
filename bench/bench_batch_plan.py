"""How the training batch plan reads a dataset written prompt by prompt: prompts per batch, files
opened and bytes read per batch, time per batch, and the memory it holds.

    python bench/bench_batch_plan.py [--prompts 128] [--seeds 16] [--shard-size 256] [--batch-size 64]

Writes a dataset the way the collectors do (prompt after prompt, ``seeds`` pairs each, SDXL-sized
text [77, 2048] and a [4, 32, 32] noise) to a temporary folder, then reads one epoch of global
batches with ``BatchPlan`` and prints the figures. The plan's own memory is the order (16 bytes per
training pair) plus one batch; the growth of the resident memory (Linux VmRSS, sampled after every
batch) is printed as a check. Figures only, no pass/fail.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from noisear.train import data  # noqa: E402
from noisear.train.data import SEED_SCHEME, prompt_seeds  # noqa: E402

TEXT, NOISE = (77, 2048), (4, 32, 32)


def resident_mib() -> float:
    """Current resident memory of this process (Linux /proc), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        info = data.DatasetInfo(source_model="bench", seed_scheme=SEED_SCHEME)
        generator = torch.Generator().manual_seed(0)
        with data.ShardWriter(folder, info, shard_size=args.shard_size) as writer:
            for p in range(args.prompts):
                text = torch.randn(1, *TEXT, generator=generator).expand(args.seeds, -1, -1)
                writer.append(
                    text, torch.randn(args.seeds, *NOISE, generator=generator), [p] * args.seeds, prompt_seeds(0, p, args.seeds)
                )
        dataset = data.ShardDataset(folder)
        reads: list[int] = []
        real = data._read_rows
        data._read_rows = lambda path, rows: reads.append(len(rows)) or real(path, rows)
        before = peak = resident_mib()
        plan = data.BatchPlan(dataset, args.batch_size, seed=0, validation_fraction=0.0)
        prompts, opens, started = [], [], time.perf_counter()
        for step in range(plan.batches_per_epoch):
            count = len(reads)
            batch = plan.batch(step)
            prompts.append(len(set(batch.prompt_index.tolist())))
            opens.append(len(reads) - count)
            peak = max(peak, resident_mib())
            del batch
        elapsed = time.perf_counter() - started
        row_bytes = 4 * (np.prod(TEXT) + np.prod(NOISE)) + TEXT[0] + 16
        batch_mib = args.batch_size * row_bytes / 2**20
        print(
            f"dataset: {len(dataset)} pairs, {args.prompts} prompts written one after another, "
            f"{len(dataset.shards)} shards of {args.shard_size} ({args.shard_size // args.seeds} prompts per shard)"
        )
        print(
            f"batches: {plan.batches_per_epoch} of {args.batch_size}; prompts per batch min {min(prompts)}, "
            f"mean {np.mean(prompts):.1f}, max {max(prompts)} (one shard at a time: at most "
            f"{min(args.batch_size, args.shard_size // args.seeds)})"
        )
        print(
            f"reads: files opened per batch mean {np.mean(opens):.1f} (max {max(opens)}), rows read per batch "
            f"{sum(reads) / len(opens):.0f} = the batch ({batch_mib:.1f} MiB), never a whole shard "
            f"({args.shard_size * row_bytes / 2**20:.0f} MiB)"
        )
        print(
            f"memory: order {plan.batches_per_epoch * args.batch_size * 16 / 2**10:.0f} KiB (16 B per pair) + one "
            f"batch; resident memory grew at most {peak - before:.0f} MiB while reading the epoch"
        )
        print(f"time: {1000 * elapsed / plan.batches_per_epoch:.1f} ms per batch (page cache warm, 1 thread)")


if __name__ == "__main__":
    main()
