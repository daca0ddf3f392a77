"""Broken priors that the toy testbeds' CI tests must catch: each is the shipped prior with one thing taken away."""

import copy

import torch

from noisear.model import NoiseAR


def zeroed_mean_head(prior: NoiseAR) -> NoiseAR:
    """The mean head outputs 0: the prior keeps its variances and loses every shift."""
    broken = copy.deepcopy(prior)
    with torch.no_grad():
        broken.prediction_head_mu[-1].weight.zero_()
        broken.prediction_head_mu[-1].bias.zero_()
    return broken


def untrained(prior: NoiseAR) -> NoiseAR:
    """A fresh network of the same config (the published initialisation: roughly N(0, I))."""
    torch.manual_seed(0)
    return NoiseAR(prior.config).train(False)


def half_strength(prior: NoiseAR) -> NoiseAR:
    """The mean head's output halved: half of every learnt shift."""
    broken = copy.deepcopy(prior)
    with torch.no_grad():
        broken.prediction_head_mu[-1].weight.mul_(0.5)
        broken.prediction_head_mu[-1].bias.mul_(0.5)
    return broken


BROKEN = {"zeroed mean head": zeroed_mean_head, "untrained": untrained, "half strength": half_strength}
