"""NoiseAR: a learned, prompt-conditioned initial noise for diffusion models (arXiv 2506.01337)."""

from .config import NoiseARConfig, NoiseARConfigError, NoiseARError
from .io import NoiseARCheckpointError, convert, describe, load, read_checkpoint, save
from .model import NoiseAR, NoiseARInputError, standard_normal

__all__ = [
    "NoiseAR",
    "NoiseARConfig",
    "NoiseARConfigError",
    "NoiseARError",
    "NoiseARCheckpointError",
    "NoiseARInputError",
    "convert",
    "describe",
    "load",
    "read_checkpoint",
    "save",
    "standard_normal",
]
__version__ = "0.3.0"
