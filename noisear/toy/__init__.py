"""The embedded CPU demo: NoiseAR end to end on two small testbeds built from scikit-learn's 8x8 digits.

- digits (``python -m noisear demo``): the class plays the prompt (noisear.toy.testbed_digits);
- layout (``python -m noisear demo layout``): a digit in a quadrant of a 16x16 canvas, asked for by a token prompt
  that may leave the quadrant open, scored on prompts the priors never trained on (noisear.toy.testbed_layout).

One pipeline (noisear.toy.demo) runs both. Everything is small enough to train and evaluate on two CPU cores;
see docs/demo.md.
"""
