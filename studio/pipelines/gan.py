"""GAN sampling (SAGAN, BigGAN): one generator forward pass per image, optional truncation.

Same contract as the diffusion pipelines: ``pipe(num_images, class_labels, seed, ...)`` returns
`StudioPipelineOutput(images, record)`, and image i comes from a `torch.Generator` seeded
``seed + i``. There are no steps, schedulers or guidance: passing such an argument is an error,
and `call_parameters` lists what the call takes.

Batch-size invariance: the generator always runs on chunks of exactly `CHUNK_SIZE` latents (the
last chunk padded with zero latents that are dropped), in eval mode (BN running statistics, fixed
spectral-norm vectors). Every image is therefore computed by the same kernels on the same shapes,
whatever the batch it was asked for in. (On CPU both a 1-image convolution and a linear on a
handful of rows take different code paths than larger batches.)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from diffusers import DiffusionPipeline

from studio.errors import StudioError
from studio.hub import register_pipeline
from studio.models.gan import GANGeneratorMixin
from studio.models.gan.truncation import truncated_normal
from studio.pipelines.base import StudioPipelineMixin, StudioPipelineOutput, check_finite, eval_mode
from studio.pipelines.record import GenerationRecord

#: images per generator forward pass (fixed, so results do not depend on the requested batch)
CHUNK_SIZE = 16


@register_pipeline
class StudioGANPipeline(StudioPipelineMixin, DiffusionPipeline):
    """Sample a SAGAN or BigGAN generator.

    :param generator: a GAN generator (`SAGANGenerator` or `BigGANGenerator`), usually the EMA copy.
    """

    family = "gan"  # replaced per instance by the generator's family ("sagan" / "biggan")
    model_cpu_offload_seq = "generator"
    #: the keyword arguments ``__call__`` takes (front ends pass only these)
    call_parameters = ("num_images", "class_labels", "seed", "truncation", "output_type")

    def __init__(self, generator: GANGeneratorMixin):
        super().__init__()
        self.register_modules(generator=generator)
        self.family = generator.family

    @property
    def num_classes(self) -> int:
        return self.generator.num_classes

    @torch.no_grad()
    def __call__(
        self,
        num_images: int | None = None,
        class_labels: int | Sequence[int] | None = None,
        seed: int | Sequence[int] | None = 0,
        truncation: float | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        **unsupported: Any,
    ) -> StudioPipelineOutput | tuple:
        """Generate ``num_images`` images (default: one per class label given, else 1).

        :param class_labels: one class for all images, a list cycled over them, or None (balanced
            classes ``i % K`` on a conditional model; must be None on an unconditional one).
        :param seed: base seed (image i uses seed + i), one seed per image, or None for random.
        :param truncation: threshold of the truncation trick (latents redrawn until every
            coordinate lies in [-threshold, threshold]); None = plain N(0, I), 0 = z = 0.
        :param output_type: ``pil``, ``np`` (N, H, W, C) in [0, 1] or ``pt`` (N, C, H, W) in [0, 1].
        """
        if unsupported:
            names = ", ".join(sorted(unsupported))
            raise StudioError(
                f"{type(self).__name__} does not take {names}: a GAN draws each image in one "
                f"forward pass (it takes {', '.join(self.call_parameters)})"
            )
        started = time.perf_counter()
        check_finite(truncation=truncation)
        device, dtype = self._execution_device, self.generator.dtype
        plan = self.begin_call(num_images, class_labels, seed, device)
        labels = plan.labels

        # 1. one latent per image from its own generator
        latents = torch.stack(
            [truncated_normal(self.generator.z_dim, truncation, g, dtype) for g in plan.generators]
        )  # (N, z_dim)
        y = torch.tensor(labels, device=device) if labels is not None else None

        # 2. the generator in eval mode, on fixed-size chunks
        generate_started = time.perf_counter()
        images = self._generate(latents.to(device), y)
        generate_s = time.perf_counter() - generate_started

        # 3. convert and record
        record = GenerationRecord(
            model=self.model_name(),
            family=self.family,
            seeds=plan.seeds,
            class_labels=labels,
            extra={"truncation": truncation, "image_size": int(images.shape[-1])},
            timings={"generate_s": round(generate_s, 4)},
        )
        return self.finish_call(images, output_type, record, started, return_dict)

    def _generate(self, latents: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """``G(z, y)`` over `CHUNK_SIZE` chunks: (N, z_dim) -> (N, C, S, S) in [-1, 1]."""
        generator = self.generator
        with eval_mode(generator):
            outputs = []
            for start in range(0, len(latents), CHUNK_SIZE):
                z = latents[start : start + CHUNK_SIZE]
                y = labels[start : start + CHUNK_SIZE] if labels is not None else None
                pad = CHUNK_SIZE - len(z)
                z = torch.cat([z, z.new_zeros(pad, z.shape[1])])
                y = torch.cat([y, y.new_zeros(pad)]) if y is not None else None
                outputs.append(generator(z, y)[: CHUNK_SIZE - pad])
        return torch.cat(outputs)
