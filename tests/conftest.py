"""Shared fixtures: a tiny config, and published-size models with random published-layout weights.

The published-size fixtures are session-scoped (113M parameters take a second or two to draw), so
every test module that asks for them shares one state dict, model and .pth file per variant.
Reusable builders live in tests/builders.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from builders import PUBLISHED, TINY, model_from_state, random_state_dict, write_pth

from noisear import NoiseAR, NoiseARConfig


@dataclass
class Published:
    """One published variant with random weights. Treat every field as read-only: they share storage."""

    variant: str
    config: NoiseARConfig
    state: dict[str, torch.Tensor]
    model: NoiseAR


@pytest.fixture
def tiny_config() -> NoiseARConfig:
    """3 channels, 3x3 grid of 2x2 patches, 16-d model, 1 layer, 1 head, 16-d text."""
    return TINY


@pytest.fixture(scope="session", params=list(PUBLISHED))
def published(request: pytest.FixtureRequest) -> Published:
    """Published-size SDXL, then Hunyuan-DiT, network with random weights in the published layout."""
    config = PUBLISHED[request.param]
    state = random_state_dict(config, seed=0)
    return Published(request.param, config, state, model_from_state(config, state))


@pytest.fixture(scope="session")
def published_pth(published: Published, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The published variant's state dict written with plain torch.save, as the authors' model.pth is."""
    return write_pth(published.state, tmp_path_factory.mktemp(published.variant) / "model.pth")
