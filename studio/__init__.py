"""studio: train, sample, accelerate and evaluate diffusion and GAN image generators."""

__version__ = "0.1.0"

from studio.errors import StudioError  # noqa: E402
from studio.hub import list_models, load_pipeline  # noqa: E402

__all__ = ["StudioError", "__version__", "list_models", "load_pipeline"]
