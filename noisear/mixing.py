"""Training-free mixing of NoiseAR noise with plain Gaussian noise ("AR prior blending").

Both inputs are [B, ...] noises in unit-variance latent space. ``strength`` a in [0, 1] is the share
of the NoiseAR noise: a = 0 gives the Gaussian input, a = 1 the NoiseAR input, bit for bit (when
``renormalize`` is off).

Modes (x = NoiseAR noise, eta = Gaussian noise):
- "linear": a*x + (1-a)*eta. Shrinks the variance in between (a = 0.5 of two independent unit
  noises has std 0.71).
- "variance-preserving": sin(a*pi/2)*x + cos(a*pi/2)*eta; the weights' squares sum to one, so two
  independent noises of equal variance keep that variance.
- "slerp": spherical interpolation from eta to x per item (all values of an item as one vector),
  which follows the sphere that high-dimensional Gaussian noise lives on; nearly parallel inputs
  fall back to linear.
"""

from __future__ import annotations

import math
import numbers

import torch

from .config import NoiseARError

MODES = ("linear", "variance-preserving", "slerp")
SLERP_PARALLEL = 1e-4  # below this angle (radians) slerp equals linear to fp32 precision


class NoiseMixingError(NoiseARError):
    """Inputs that cannot be mixed (shapes, strength, mode)."""


def mix_weights(strength: float, mode: str) -> tuple[float, float]:
    """(weight of the NoiseAR noise, weight of the Gaussian noise) for "linear" and "variance-preserving".

    The endpoints are exact: (0, 1) at strength 0 and (1, 0) at strength 1.
    """
    if mode == "linear":
        return strength, 1.0 - strength
    if mode == "variance-preserving":
        if strength == 1.0:  # cos(pi/2) is 6e-17 in floating point, not 0
            return 1.0, 0.0
        angle = strength * math.pi / 2
        return math.sin(angle), math.cos(angle)
    raise NoiseMixingError(f"mode {mode!r} has no fixed weights; fixed-weight modes are 'linear', 'variance-preserving'")


def _slerp(x: torch.Tensor, eta: torch.Tensor, strength: float) -> torch.Tensor:
    """Per item: sin((1-a)w)/sin(w) * eta + sin(a w)/sin(w) * x, w the angle between x and eta."""
    flat_x, flat_eta = x.flatten(1).double(), eta.flatten(1).double()
    cosine = torch.nn.functional.cosine_similarity(flat_x, flat_eta, dim=1).clamp(-1.0, 1.0)
    angle = torch.arccos(cosine)  # [B]
    sine = torch.sin(angle)
    parallel = angle < SLERP_PARALLEL
    safe = torch.where(parallel, torch.ones_like(sine), sine)
    w_x = torch.where(parallel, torch.full_like(angle, strength), torch.sin(strength * angle) / safe)
    w_eta = torch.where(parallel, torch.full_like(angle, 1.0 - strength), torch.sin((1.0 - strength) * angle) / safe)
    shape = (-1,) + (1,) * (x.ndim - 1)
    return (w_x.view(shape) * x.double() + w_eta.view(shape) * eta.double()).to(x.dtype)


def renormalize_std(noise: torch.Tensor) -> torch.Tensor:
    """Scale each item [i] so that the standard deviation of all its values is 1 (its mean is kept)."""
    std = noise.flatten(1).std(dim=1).clamp_min(torch.finfo(noise.dtype).tiny)
    mean = noise.flatten(1).mean(dim=1)
    shape = (-1,) + (1,) * (noise.ndim - 1)
    return (noise - mean.view(shape)) / std.view(shape) + mean.view(shape)


def blend(
    noisear_noise: torch.Tensor, gaussian_noise: torch.Tensor, strength: float, mode: str = "linear", renormalize: bool = False
) -> torch.Tensor:
    """Mix ``noisear_noise`` x and ``gaussian_noise`` eta, both [B, ...] of one shape and dtype.

    ``strength`` in [0, 1] is the NoiseAR share (see the module docstring for the modes).
    ``renormalize`` rescales each item of the result to unit std (see :func:`renormalize_std`); the
    endpoint identities then hold up to that rescaling only.
    """
    if mode not in MODES:
        raise NoiseMixingError(f"unknown blend mode {mode!r}; choose one of {', '.join(MODES)}")
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0.0 <= strength <= 1.0:
        raise NoiseMixingError(f"strength must be a number in [0, 1] (share of the NoiseAR noise), got {strength!r}")
    if noisear_noise.shape != gaussian_noise.shape:
        raise NoiseMixingError(
            f"cannot blend noises of different shapes: NoiseAR {list(noisear_noise.shape)}, "
            f"Gaussian {list(gaussian_noise.shape)}; both must come from the same latent"
        )
    for name, noise in (("NoiseAR", noisear_noise), ("Gaussian", gaussian_noise)):
        if not noise.is_floating_point() or not torch.isfinite(noise).all():
            raise NoiseMixingError(
                f"the {name} noise holds NaN or infinite values (or is not floating point); check the node that made it"
            )
    gaussian_noise = gaussian_noise.to(device=noisear_noise.device, dtype=noisear_noise.dtype)
    if mode == "slerp":
        mixed = _slerp(noisear_noise, gaussian_noise, strength)
    else:
        w_x, w_eta = mix_weights(strength, mode)
        mixed = w_x * noisear_noise + w_eta * gaussian_noise
    mixed = renormalize_std(mixed) if renormalize else mixed
    if not torch.isfinite(mixed).all():  # finite inputs near the float limit can still overflow
        raise NoiseMixingError("blending gave NaN or infinite values; the inputs are far outside unit variance")
    return mixed
