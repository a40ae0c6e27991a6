"""ppgan: privacy-preserving GAN for case-based explanations of medical images."""

from ppgan.errors import PpganError

__all__ = ["PpganError"]
__version__ = "0.1.0"
