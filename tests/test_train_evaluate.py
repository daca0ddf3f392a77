"""Evaluation harness with stand-in backend and scorer: std-matched controls, paired test, table, PNG."""
import itertools
import math
import struct
import zlib

import numpy as np
import torch

from noisear import NoiseAR, NoiseARConfig
from noisear.train.dpo import PromptSet
from noisear.train.evaluate import (BLEND_SEED_OFFSET, blend_source, evaluate, gaussian_source, image_grid, noisear_source,
                                    paired_test, save_report, write_png)

SHAPE = (3, 4, 4)


def read_png(path):
    """Independent minimal PNG reader for 8-bit RGB, filter 0 (what write_png produces)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks = 8, {}
    while position < len(data):
        length, = struct.unpack(">I", data[position:position + 4])
        kind, body = data[position + 4:position + 8], data[position + 8:position + 8 + length]
        crc, = struct.unpack(">I", data[position + 8 + length:position + 12 + length])
        assert crc == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        position += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, color) == (8, 2)
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, 1 + 3 * width)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(height, width, 3)


def prompts(count=6):
    return PromptSet(torch.randn(count, 2, 4), torch.ones(count, 2, dtype=torch.bool), torch.arange(count),
                     tuple(f"prompt {i}" for i in range(count)))


def backend(noise, prompts):
    """Stand-in renderer: images = sigmoid of the noise, upsampled 2x."""
    return torch.sigmoid(noise).repeat_interleave(2, 2).repeat_interleave(2, 3)


def brightness(images, prompts):
    return images.mean(dim=(1, 2, 3))


def test_paired_test_exact_and_monte_carlo_agree_with_direct_computations():
    result = paired_test(np.ones(4), np.zeros(4))
    assert result["p_value"] == 2 / 16 and result["mean_diff"] == 1.0  # only all-plus and all-minus are as extreme
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=18) + 0.4, rng.normal(size=18)
    diff = a - b
    assert math.isclose(paired_test(a, b)["t"], diff.mean() / (diff.std(ddof=1) / math.sqrt(18)))
    means = [abs(np.dot(signs, diff)) / 18 for signs in itertools.product((-1, 1), repeat=18)]
    exact = np.mean(np.array(means) >= abs(diff.mean()) - 1e-12)
    assert abs(paired_test(a, b, permutations=20000)["p_value"] - exact) < 0.01


def test_png_writer_round_trips_through_an_independent_reader(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    write_png(tmp_path / "x.png", image)
    assert np.array_equal(read_png(tmp_path / "x.png"), image)


def test_harness_scores_sources_on_the_same_seeds_with_std_matched_controls(tmp_path):
    sources = {"gaussian": gaussian_source(SHAPE), "shifted": lambda p, s: gaussian_source(SHAPE)(p, s) + 0.5,
               "shrunk": gaussian_source(SHAPE, std=0.5)}
    result = evaluate(sources, backend, {"brightness": brightness}, prompts(), seeds=range(5))
    scores = result.scores["brightness"]
    assert set(scores) == {"gaussian", "shifted", "shrunk", "gaussian@std(shifted)", "gaussian@std(shrunk)"}
    assert scores["shrunk"].shape == (5, 6)
    assert abs(result.noise_std["shrunk"] - 0.5) < 0.05
    assert math.isclose(result.noise_std["gaussian@std(shrunk)"], result.noise_std["shrunk"], rel_tol=1e-6)
    np.testing.assert_allclose(scores["shrunk"], scores["gaussian@std(shrunk)"], atol=1e-6)  # same seeds
    assert result.tests["brightness"]["shrunk"]["p_value"] > 0.05
    shifted = result.tests["brightness"]["shifted"]
    assert shifted["mean_diff"] > 0.05 and shifted["p_value"] < 0.001
    assert "gaussian" not in result.tests["brightness"]
    table = result.table()
    assert table.count("\n| ") == 5 and "shifted" in table and "p=" in table
    paths = save_report(result, tmp_path)
    grid = read_png(paths["grid"])
    assert grid.shape == (5 * (8 + 2) + 2, 6 * (8 + 2) + 2, 3)
    expected = (backend(sources["shifted"](prompts(), [0] * 6), None)[0].permute(1, 2, 0).numpy() * 255).round()
    np.testing.assert_array_equal(grid[12:20, 2:10], expected.astype(np.uint8))  # row 2 = shifted, first prompt


def test_noisear_and_blend_sources_use_the_seeds_gaussian_noise():
    torch.manual_seed(0)
    model = NoiseAR(NoiseARConfig(patch_size=2, channels=3, latent_height=4, latent_width=4, d_model=8, d_ff=16,
                                  text_dim=4, dropout=0.0))
    plain = gaussian_source(SHAPE)(prompts(), [3] * 6)
    sampled = noisear_source(model, temperature=1.0)(prompts(), [3] * 6)
    assert torch.allclose(sampled, plain, atol=0.05)  # an untrained prior is about N(0, I) with eps = the seed's noise
    partner = gaussian_source(SHAPE)(prompts(), [3 + BLEND_SEED_OFFSET] * 6)
    assert torch.equal(blend_source(noisear_source(model, 1.0), SHAPE, 0.0)(prompts(), [3] * 6), partner)
    assert not torch.allclose(partner, plain)  # the blend's Gaussian is independent of the prior's eps
    wide = gaussian_source(SHAPE)(prompts(), list(range(6)))
    blended = blend_source(noisear_source(model, 1.0), SHAPE, 0.5)(prompts(), list(range(6)))
    assert abs(blended.std().item() - wide.std().item()) < 0.1  # variance-preserving (same eps would give ~1.4)
    assert image_grid([torch.zeros(2, 3, 4, 4)]).shape == (8, 14, 3)  # 2 px padding around each
