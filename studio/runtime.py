"""Device and attention-backend selection shared by training, sampling and the app."""

from __future__ import annotations

import torch

from studio.errors import ConfigError

ATTENTION_BACKENDS = ("sdpa", "xformers")

#: byte alignment of PyTorch's CPU allocator; tensors read from a safetensors file may start anywhere
CPU_ALIGNMENT = 64


def resolve_device(name: str | None = None) -> torch.device:
    """``auto``/None picks CUDA when present, else CPU; anything else is taken as given."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available on this machine")
    return device


def xformers_unavailable_reason() -> str | None:
    """Why xformers cannot be used here, or None if it can."""
    if not torch.cuda.is_available():
        return "xformers attention needs a CUDA GPU and none is available (use --attention sdpa)"
    try:
        import xformers  # noqa: F401
    except ImportError:
        return "xformers is not installed (pip install 'studio[gpu]', or use --attention sdpa)"
    return None


def set_attention_backend(module: torch.nn.Module, backend: str) -> None:
    """Switch every diffusers model inside ``module`` to ``sdpa`` (default) or ``xformers``.

    Raises `ConfigError` with the reason when xformers is asked for but cannot run.
    """
    if backend not in ATTENTION_BACKENDS:
        raise ConfigError(f"unknown attention backend {backend!r}; choose {' or '.join(ATTENTION_BACKENDS)}")
    if backend == "xformers":
        reason = xformers_unavailable_reason()
        if reason:
            raise ConfigError(reason)
    if backend == "sdpa":
        return  # diffusers models use PyTorch SDPA by default
    for sub in module.modules():
        if hasattr(sub, "enable_xformers_memory_efficient_attention"):
            sub.enable_xformers_memory_efficient_attention()
            return


def own_aligned_memory(module: torch.nn.Module) -> int:
    """Copy every CPU parameter or buffer of ``module`` that is not 64-byte aligned into fresh memory.

    Tensors loaded from a safetensors file are views into one buffer at arbitrary offsets.
    Vectorised CPU reductions (dot and matrix-vector products, e.g. spectral norm's σ = uᵀWv
    recomputed at every forward) split their work by the address of the data, so a network
    loaded from disk gave different last bits from the same weights in freshly allocated memory.
    Copying restores one memory layout for trained and loaded models (and detaches the model from
    the file). Returns the number of tensors copied.
    """
    copied = 0
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.device.type == "cpu" and tensor.numel() and tensor.data_ptr() % CPU_ALIGNMENT:
                tensor.data = tensor.data.clone()
                copied += 1
    return copied
