"""ddpmkit: Denoising Diffusion Probabilistic Models on CelebA."""

__version__ = "0.1.0"
