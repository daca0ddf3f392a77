"""One small training loop shared by the toy networks (classifier, denoiser, pixel prior).

NoiseAR priors are trained by noisear.train; this loop is only for the toy's own models.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn
from tqdm import tqdm

LossFn = Callable[[Sequence[torch.Tensor], torch.Generator], torch.Tensor]


def fit(
    model: nn.Module,
    tensors: Sequence[torch.Tensor],
    loss_fn: LossFn,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    desc: str,
    weight_decay: float = 0.0,
) -> list[float]:
    """Minimise ``loss_fn(batch, generator)`` with AdamW and a cosine schedule; returns the loss per step.

    ``tensors`` share their first dimension; each step draws ``batch_size`` rows with replacement
    from a generator seeded by ``seed``, so a run is reproducible.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    count = tensors[0].shape[0]
    losses = []
    model.train()
    for _ in tqdm(range(steps), desc=desc, leave=False, mininterval=1.0):
        index = torch.randint(0, count, (batch_size,), generator=generator)
        loss = loss_fn([t[index] for t in tensors], generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.train(False)
    return losses
