"""One-call sampling with a DSNO student: noise in, the teacher's DDIM-N sample out (NFE = 1).

The student emits its whole trajectory in one network call (M slices batched) and the last state is
the image. It knows nothing but its training grid: there is no step count to choose and no
guidance to set (the teacher's CFG scale is baked in), so the call refuses such settings with a
message saying what the student was distilled for. Image i starts from noise drawn with seed
``seed + i`` (the same noise as trajectory pair ``seed + i`` of the recorder), and the student runs
on fixed chunks of `CHUNK_SIZE` images, so an image never depends on the batch it is asked for in.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from diffusers import DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor

from studio.errors import StudioError
from studio.hub import register_pipeline
from studio.models.dsno import DSNOStudent
from studio.pipelines.base import StudioPipelineMixin, StudioPipelineOutput, check_finite
from studio.pipelines.record import GenerationRecord

#: images per student call (the last chunk is padded with zero noise that is dropped)
CHUNK_SIZE = 8


@register_pipeline
class StudioDSNOPipeline(StudioPipelineMixin, DiffusionPipeline):
    """Sample a distilled DSNO student.

    :param student: a `DSNOStudent` (usually the trainer's EMA copy).
    """

    family = "dsno"
    model_cpu_offload_seq = "student"
    #: the keyword arguments ``__call__`` takes (front ends pass only these)
    call_parameters = ("num_images", "class_labels", "seed", "output_type")

    def __init__(self, student: DSNOStudent):
        super().__init__()
        self.register_modules(student=student)

    @property
    def num_classes(self) -> int:
        return int(self.student.config.num_classes)

    @torch.no_grad()
    def __call__(
        self,
        num_images: int | None = None,
        class_labels: int | Sequence[int] | None = None,
        seed: int | Sequence[int] | None = 0,
        output_type: str = "pil",
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        return_dict: bool = True,
    ) -> StudioPipelineOutput | tuple:
        """Generate ``num_images`` images (default: one per class label given, else 1).

        ``num_inference_steps`` and ``guidance_scale`` exist only to be refused with a clear message
        (None, or exactly what the student was distilled with, is accepted).
        """
        started = time.perf_counter()
        self._check_fixed_settings(num_inference_steps, guidance_scale)
        device, dtype = self._execution_device, self.student.dtype
        plan = self.begin_call(num_images, class_labels, seed, device)
        num_images, labels = plan.num_images, plan.labels

        # 1. initial noise, one generator per image
        config = self.student.unet.config
        size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
        shape = (num_images, self.student.image_channels, size, size)
        noise = randn_tensor(shape, generator=plan.generators, device=device, dtype=dtype)
        y = torch.tensor(labels, device=device) if labels is not None else None

        # 2. one student call per fixed-size chunk; the last state of each trajectory is the sample
        call_started = time.perf_counter()
        images = torch.cat(
            [
                self._sample_chunk(noise[i : i + CHUNK_SIZE], None if y is None else y[i : i + CHUNK_SIZE])
                for i in range(0, num_images, CHUNK_SIZE)
            ]
        )
        call_s = time.perf_counter() - call_started

        student = self.student.config
        record = GenerationRecord(
            model=self.model_name(),
            family=self.family,
            seeds=plan.seeds,
            class_labels=labels,
            sampler="dsno",
            steps=1,
            guidance_scale=float(student.guidance_scale),
            extra={
                "nfe": 1,
                "teacher": student.teacher,
                "teacher_sampler": f"ddim-{student.teacher_steps}",
                "time_grid": list(student.timesteps),
                "image_size": size,
            },
            timings={"student_s": round(call_s, 4)},
        )
        return self.finish_call(images, output_type, record, started, return_dict)

    def _sample_chunk(self, noise: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Final states of up to `CHUNK_SIZE` trajectories, computed on exactly `CHUNK_SIZE` rows."""
        n = noise.shape[0]
        pad = CHUNK_SIZE - n
        if pad:
            noise = torch.cat([noise, noise.new_zeros((pad, *noise.shape[1:]))])
            labels = None if labels is None else torch.cat([labels, labels.new_zeros(pad)])
        return self.student(noise, labels)[:n, -1]

    def _check_fixed_settings(self, steps: int | None, guidance: float | None) -> None:
        check_finite(guidance_scale=guidance)
        student = self.student.config
        if steps is not None and steps != 1:
            raise StudioError(
                f"a DSNO student samples in one network call; it takes no step count (got "
                f"num_inference_steps={steps}). Its teacher's {student.teacher_steps}-step DDIM "
                "trajectory is baked in; sample the teacher for other step counts"
            )
        if guidance is not None and float(guidance) != float(student.guidance_scale):
            raise StudioError(
                f"this DSNO student was distilled at guidance scale {student.guidance_scale} and "
                f"cannot sample at {guidance}; distil another student for another scale"
            )
