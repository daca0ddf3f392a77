"""The embedded CPU demo: NoiseAR end to end on scikit-learn's 8x8 digits (the class plays the prompt).

Everything here is small enough to train and evaluate on two CPU cores; see docs/demo.md.
"""
