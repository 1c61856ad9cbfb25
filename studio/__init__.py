"""studio: train, sample, accelerate and evaluate diffusion and GAN image generators."""

__version__ = "0.1.0"

from studio.errors import StudioError
from studio.hub import list_models, load_pipeline

__all__ = ["StudioError", "__version__", "list_models", "load_pipeline"]
