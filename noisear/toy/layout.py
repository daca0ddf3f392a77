"""The layout testbed's world: a digit placed in one quadrant of a 16x16 canvas, asked for by a short prompt.

A prompt is a digit and up to two position words: "3" (anywhere: 4 quadrants), "3 left" (2), "3 top left" (1).
The prompt leaves the rest of the layout open, so the images of "3" are a mixture of four layouts and the noise
that makes them is too. Tokens: [digit, row word?, column word?], padded to MAX_TOKENS; the mask marks real ones.

Quadrants: 0 top left, 1 top right, 2 bottom left, 3 bottom right. Canvases are [N, 1, 16, 16] in [-1, 1]
(background -1), the digit an 8x8 digit of noisear.toy.data copied in unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import NUM_CLASSES, Digits

DIGIT_SIZE = 8
CANVAS_SHAPE = (1, 16, 16)
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
# the nine ways a prompt can constrain the layout, and the quadrants each allows
LAYOUTS = ("", "top", "bottom", "left", "right", "top left", "top right", "bottom left", "bottom right")
ALLOWED = {
    "": (0, 1, 2, 3),
    "top": (0, 1),
    "bottom": (2, 3),
    "left": (0, 2),
    "right": (1, 3),
    **{name: (q,) for q, name in enumerate(QUADRANTS)},
}
NUM_PROMPTS = NUM_CLASSES * len(LAYOUTS)  # prompt index = digit * 9 + layout
# Prompts the NoiseAR prior never trains on (the diffusion model knows every prompt): two layouts per digit,
# every layout held out for two or three digits, so each held-out prompt recombines words seen in training.
HELD_OUT_PROMPTS = tuple(sorted(d * len(LAYOUTS) + (d + k) % len(LAYOUTS) for d in range(NUM_CLASSES) for k in (0, 4)))

VOCABULARY = ("<pad>", "<empty>", *(str(d) for d in range(NUM_CLASSES)), "top", "bottom", "left", "right")
PAD, EMPTY = 0, 1
MAX_TOKENS = 3
INK_THRESHOLD = 7.0  # ink (sum of (pixel + 1) / 2) that counts as a digit in a quadrant; real digits: 14 to 27


def prompt_text(index: int) -> str:
    """'3 top left' for prompt index 3 * 9 + 5."""
    digit, layout = divmod(int(index), len(LAYOUTS))
    return f"{digit} {LAYOUTS[layout]}".strip()


def prompt_parts(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """prompt indices [N] -> (digit [N], layout [N])."""
    return index // len(LAYOUTS), index % len(LAYOUTS)


def allowed_quadrants(index: torch.Tensor) -> torch.Tensor:
    """prompt indices [N] -> [N, 4] bool: the quadrants the prompt allows."""
    table = torch.tensor([[q in ALLOWED[name] for q in range(4)] for name in LAYOUTS])
    return table[prompt_parts(index)[1]]


def _token_table() -> torch.Tensor:
    ids = torch.full((NUM_PROMPTS, MAX_TOKENS), PAD, dtype=torch.long)
    for index in range(NUM_PROMPTS):
        words = prompt_text(index).split()
        ids[index, : len(words)] = torch.tensor([VOCABULARY.index(w) for w in words])
    return ids


TOKEN_TABLE = _token_table()  # [NUM_PROMPTS, MAX_TOKENS]


def tokens(index: torch.Tensor) -> torch.Tensor:
    """prompt indices [N] -> token ids [N, MAX_TOKENS] (PAD after the prompt)."""
    return TOKEN_TABLE[index]


def empty_tokens(count: int) -> torch.Tensor:
    """[count, MAX_TOKENS]: the empty prompt of classifier-free guidance."""
    ids = torch.full((count, MAX_TOKENS), PAD, dtype=torch.long)
    ids[:, 0] = EMPTY
    return ids


def place(digits: torch.Tensor, quadrant: torch.Tensor) -> torch.Tensor:
    """8x8 digits [N,1,8,8] and quadrants [N] -> canvases [N,1,16,16] with the digit in its quadrant."""
    canvas = torch.full((len(digits), *CANVAS_SHAPE), -1.0)
    for q in range(4):
        rows = quadrant == q
        top, left = (q // 2) * DIGIT_SIZE, (q % 2) * DIGIT_SIZE
        canvas[rows, :, top : top + DIGIT_SIZE, left : left + DIGIT_SIZE] = digits[rows]
    return canvas


def quadrant_crops(canvas: torch.Tensor) -> torch.Tensor:
    """[N,1,16,16] -> [N,4,1,8,8]: the four quadrants in QUADRANTS order."""
    rows = canvas.unflatten(2, (2, DIGIT_SIZE)).unflatten(4, (2, DIGIT_SIZE))  # [N,1,2,8,2,8]
    return rows.permute(0, 2, 4, 1, 3, 5).reshape(len(canvas), 4, 1, DIGIT_SIZE, DIGIT_SIZE)


@dataclass(frozen=True)
class Detection:
    """What the canvas holds: ``quadrant`` [N] with the most ink, ``count`` [N] of quadrants holding a digit."""

    quadrant: torch.Tensor
    count: torch.Tensor


def detect(canvas: torch.Tensor) -> Detection:
    """The position and count detector: ink per quadrant, no learning. 100 % right on real canvases."""
    ink = ((quadrant_crops(canvas) + 1) / 2).sum((2, 3, 4))  # [N, 4]
    return Detection(ink.argmax(1), (ink > INK_THRESHOLD).sum(1))


def sample_prompts(quadrant: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For digits in ``quadrant`` [N]: one of the four layouts that allow it (anywhere, its row, its column,
    itself), uniformly; returns layout indices [N]. Then p(quadrant | layout) is uniform over the allowed ones."""
    consistent = torch.tensor([[k for k, name in enumerate(LAYOUTS) if q in ALLOWED[name]] for q in range(4)])  # [4, 4]
    pick = torch.randint(0, 4, quadrant.shape, generator=generator)
    return consistent[quadrant, pick]


def canvases(digits: Digits, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random quadrant and consistent prompt for each digit: (canvases [N,1,16,16], prompt indices [N],
    quadrants [N])."""
    quadrant = torch.randint(0, 4, (len(digits),), generator=generator)
    layout = sample_prompts(quadrant, generator)
    return place(digits.images, quadrant), digits.labels * len(LAYOUTS) + layout, quadrant


def prompt_conditioning(
    images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The denoiser's training batches (noisear.toy.diffusion.Conditioning): digits [B,1,8,8] and labels [B]
    -> (canvases [B,1,16,16], token ids [B, MAX_TOKENS])."""
    canvas, prompt, _ = canvases(Digits(images, labels), generator)
    return canvas, tokens(prompt)


def canvas_examples(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The judge's and reward model's training examples (noisear.toy.data.Examples): digits [B,1,8,8] in random
    quadrants -> (canvases [B,1,16,16], class digit * 4 + quadrant [B])."""
    quadrant = torch.randint(0, 4, (len(images),), generator=generator)
    return place(images, quadrant), labels * 4 + quadrant


def prompt_log_prob(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """A (digit x quadrant) classifier's logits [N, 40] -> log p(the prompt holds) [N]: the log of the probability
    of the requested digit in any quadrant the prompt allows."""
    log_probs = logits.log_softmax(-1).view(-1, NUM_CLASSES, 4)
    digit = prompt_parts(index)[0]
    per_quadrant = log_probs[torch.arange(len(index)), digit]  # [N, 4]
    return per_quadrant.masked_fill(~allowed_quadrants(index), float("-inf")).logsumexp(-1)
