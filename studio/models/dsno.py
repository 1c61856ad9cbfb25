"""DSNO student: a teacher UNet plus temporal convolutions that emits a whole trajectory in one call.

DSNO (Zheng et al., ICML 2023, "Fast Sampling of Diffusion Models via Operator Learning") distils a
teacher's deterministic sampler into one network evaluation: the student gets the initial noise
``x_T`` once per time slice (M slices, slice m carrying the time embedding of grid time t_m) and
returns the M states ``x(t_1) .. x(t_M)`` of the teacher's trajectory; the last (t = 0) is the sample.
Slices are ordinary batch rows for the UNet; `TimeConv` layers, inserted after every ResNet(+attention)
stage by forward hooks, mix them along the time axis in Fourier space (the reference's models/tddpmm.py).
Since every slice starts from the same ``x_T``, the first ResNet's time-independent head runs once
per image (`SharedStem`).

The backbone is rebuilt from the teacher's config and loaded with a copy of its weights, so the
teacher instance is never hooked. Hooks are bound methods of the `TimeConv` modules: a deep copy of
the student (the trainer's EMA shadow) hooks its own copies. The grid, the teacher's fingerprint,
guidance scale and class set are part of the config: a student is valid only for them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin, UNet2DConditionModel, UNet2DModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from studio.errors import CheckpointError, ConfigError

#: backbone classes a student can be built on, by class name (the name is stored in the config)
UNET_CLASSES: dict[str, type[ModelMixin]] = {
    "UNet2DModel": UNet2DModel,
    "UNet2DConditionModel": UNet2DConditionModel,
}
#: how the raw per-slice output becomes a state (see `DSNOStudent`'s ``output_param``)
OUTPUT_PARAMS = ("x0_ddim", "state")
#: TimeConv initialisations: the reference's small uniform weights, or zeros (student == teacher per slice)
INITS = ("reference", "zero")
#: LeakyReLU slope of the temporal layers (reference value)
LEAKY_SLOPE = 0.01
#: config fields fixed by training; overriding them at load time would silently change the operator
FROZEN_FIELDS = (
    "num_slices",
    "timesteps",
    "alphas_cumprod",
    "alpha_cumprod_start",
    "teacher_hash",
    "guidance_scale",
    "num_classes",
    "output_param",
    "unet_config",
    "unet_class",
)


@dataclass
class DSNOStudentConfig:
    """What training chooses of a student's shape; the backbone is the teacher's UNet and the grid's
    timesteps and ᾱ come from the teacher's schedule, so they are not settings.

    :param num_slices: M, the trajectory states the student emits (also the states recorded per
        teacher trajectory, on the quadratic grid).
    :param modes: Fourier modes of every `TimeConv` (1 to M // 2 + 1).
    :param output_param: how a raw slice becomes a state, one of `OUTPUT_PARAMS` (see `DSNOStudent`).
    :param tconv_init: `TimeConv` initialisation, one of `INITS`.
    """

    num_slices: int = 4
    modes: int = 2
    output_param: str = "x0_ddim"
    tconv_init: str = "reference"


# ============================================================================ temporal convolution
class TimeConv(nn.Module):
    """FNO-style mixing of M time slices: ``out = u + LeakyReLU(irfft(R · rfft_M(u)[:modes]))``.

    Acts on channels x time only, shared over pixels. ``weight`` holds the complex ``R`` (C_in, C_out,
    modes) as real/imaginary pairs (C, C, modes, 2), so safetensors and every optimizer treat it as a
    plain float tensor. The FFT treats the slices as equally spaced samples of a periodic signal.

    The mixing is linear in ``u`` over (time, channel), so when no gradient is recorded (sampling,
    evaluation) it runs as one real (M·C) x (M·C) 1x1 convolution, `operator`, instead of an rfft, a
    complex einsum and an irfft: same map up to float rounding, fewer passes over the activations.
    With gradients on it runs the FFT form, so training sees exactly the parametrisation it learns.

    :param channels: feature channels C of the hooked layer.
    :param num_slices: M, the number of time slices per image.
    :param modes: Fourier modes kept (at most M // 2 + 1; 2 in the reference).
    :param init: ``reference`` (uniform[0, 1) / C² for both parts) or ``zero`` (identity map).
    """

    def __init__(self, channels: int, num_slices: int, modes: int = 2, init: str = "reference"):
        super().__init__()
        if not 1 <= modes <= num_slices // 2 + 1:
            raise ConfigError(
                f"TimeConv modes must be in 1..{num_slices // 2 + 1} for {num_slices} slices, got {modes}"
            )
        if init not in INITS:
            raise ConfigError(f"unknown TimeConv init {init!r} (known: {', '.join(INITS)})")
        self.num_slices = num_slices
        self.modes = modes
        self.weight = nn.Parameter(torch.zeros(channels, channels, modes, 2))
        if init == "reference":
            with torch.no_grad():
                self.weight.uniform_(0.0, 1.0).div_(channels * channels)
        # (key of the weight it was built from, conv weight); a plain attribute, not state
        self._operator: tuple[tuple, torch.Tensor] | None = None

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """``u``: (B, M, C, H, W) -> same shape."""
        with torch.autocast(device_type=u.device.type, enabled=False):
            if torch.is_grad_enabled():
                v = self.spectral(u.float(), self.weight.float())
            else:
                b, m, c, h, w = u.shape
                v = F.conv2d(u.float().reshape(b, m * c, h, w), self.operator()).view(b, m, c, h, w)
        return u + F.leaky_relu(v.to(u.dtype), LEAKY_SLOPE)

    def spectral(self, u: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The mixing before the activation and residual, in Fourier form: (B, M, C, H, W) -> same shape."""
        spectrum = torch.fft.rfft(u, dim=1)  # (B, M//2+1, C, H, W) complex
        kernel = torch.view_as_complex(weight.contiguous())  # (C, C, modes); contiguous after channels_last
        mixed = torch.einsum("bkchw,cdk->bkdhw", spectrum[:, : self.modes], kernel)  # (B, modes, C, H, W)
        return torch.fft.irfft(mixed, n=self.num_slices, dim=1)  # higher modes zero-padded

    def operator(self) -> torch.Tensor:
        """`spectral` as a float32 1x1-conv weight (M·C_out, M·C_in, 1, 1), channel index ``m·C + c``.

        Built in float64 by mixing the basis vectors, so it is the Fourier map itself (including
        irfft dropping the imaginary part of mode 0), rounded once. Cached until the weight changes:
        the key holds its storage, device, dtype and in-place version counter, which optimizer
        steps, EMA updates and ``load_state_dict`` all bump.
        """
        weight = self.weight
        key = (weight.data_ptr(), weight.device, weight.dtype, weight._version)
        if self._operator is None or self._operator[0] != key:
            with torch.no_grad():
                size = self.num_slices * weight.shape[0]
                basis = torch.eye(size, dtype=torch.float64, device=weight.device)
                columns = self.spectral(basis.view(size, self.num_slices, -1, 1, 1), weight.double())
                dense = columns.reshape(size, size).T.contiguous()  # [out (t, d), in (s, c)]
            self._operator = (key, dense.float()[:, :, None, None])
        return self._operator[1]

    def hook(self, module: nn.Module, args: tuple, output: Any) -> Any:
        """Forward hook: mix the hooked layer's output (B·M, C, H, W) over its M slices."""
        hidden = output[0] if isinstance(output, tuple) else output
        mixed = self(hidden.unflatten(0, (-1, self.num_slices))).flatten(
            0, 1
        )  # (B, M, C, H, W) -> (B·M, ...)
        return (mixed, *output[1:]) if isinstance(output, tuple) else mixed


class SharedStem:
    """Runs the first ResNet's time-independent head once per image instead of once per slice.

    All M slices of an image enter the UNet with the same ``x_T`` and differ only in the time
    embedding, which the first ResNet adds after ``norm1 -> SiLU -> conv1``. A forward pre-hook on
    ``norm1`` keeps one row per image (rows are ``b·M + m``), a forward hook on ``conv1`` repeats its
    output M times: the same values (up to float rounding, as the batch differs) at 1/M of the cost.
    A plain object holding only M and a switch, so deep copies of the student carry their own.
    ``enabled = False`` runs every slice through the head again (what `bench/dsno.py --ablations`
    times against).
    """

    def __init__(self, num_slices: int):
        self.num_slices = num_slices
        self.enabled = True

    @staticmethod
    def applies_to(unet: nn.Module) -> bool:
        """Whether the first block starts with a `ResnetBlock2D` whose head sees only the input."""
        first = unet.down_blocks[0].resnets[0]
        return type(first) is ResnetBlock2D and first.upsample is None and first.downsample is None

    def attach(self, unet: nn.Module) -> None:
        first = unet.down_blocks[0].resnets[0]
        first.norm1.register_forward_pre_hook(self.one_row_per_image)
        first.conv1.register_forward_hook(self.one_row_per_slice)

    def one_row_per_image(self, module: nn.Module, args: tuple) -> tuple | None:
        return (args[0][:: self.num_slices], *args[1:]) if self.enabled else None

    def one_row_per_slice(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        return output.repeat_interleave(self.num_slices, 0) if self.enabled else None


def hook_points(unet: nn.Module) -> list[tuple[nn.Module, int]]:
    """Where temporal layers go, in forward order, with each point's output channels (as the DSNO reference).

    After every down/up ResNet (its attention, when one follows it) and after the middle attention
    (the first middle ResNet without attention); never after samplers or at the output.
    """
    points: list[tuple[nn.Module, int]] = []

    def stage(block: nn.Module, index: int) -> None:
        resnet = block.resnets[index]
        attentions = getattr(block, "attentions", None)
        attention = attentions[index] if attentions is not None and len(attentions) > index else None
        points.append((attention if attention is not None else resnet, resnet.out_channels))

    for block in unet.down_blocks:
        for i in range(len(block.resnets)):
            stage(block, i)
    if unet.mid_block is not None:
        stage(unet.mid_block, 0)
    for block in unet.up_blocks:
        for i in range(len(block.resnets)):
            stage(block, i)
    return points


# ============================================================================ teacher identity
def teacher_fingerprint(unet: nn.Module, scheduler_config: dict[str, Any] | None = None) -> str:
    """A short sha256 of the teacher's weights (names, shapes, values) and noise schedule."""
    digest = hashlib.sha256()
    for name, tensor in sorted(unet.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    if scheduler_config is not None:
        keys = (
            "num_train_timesteps",
            "beta_start",
            "beta_end",
            "beta_schedule",
            "trained_betas",
            "prediction_type",
        )
        digest.update(
            json.dumps({k: scheduler_config.get(k) for k in keys}, sort_keys=True, default=str).encode()
        )
    return digest.hexdigest()[:16]


def public_config(config: Any) -> dict[str, Any]:
    """A model config without diffusers' private ``_*`` keys, as plain JSON types."""
    return json.loads(json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}))


# ============================================================================ student
class DSNOStudent(ModelMixin, ConfigMixin):
    """Teacher UNet + `TimeConv` layers: ``x_T`` (B, C, H, W) -> trajectory states (B, M, C, H, W), [-1, 1]-ish.

    Build one with `DSNOStudent.from_teacher`; the constructor takes only what the config stores.

    :param unet_class: ``UNet2DModel`` or ``UNet2DConditionModel``.
    :param unet_config: the teacher's config (``_*`` keys dropped).
    :param timesteps: the M teacher timesteps given to the UNet, one per recorded state (last: 0).
    :param alphas_cumprod: ᾱ of each recorded state (last: the scheduler's final ᾱ, 1 with set_alpha_to_one).
    :param alpha_cumprod_start: ᾱ of ``x_T`` (the teacher's first sampling timestep).
    :param num_slices: M; must equal ``len(timesteps)``.
    :param modes: Fourier modes of every `TimeConv`.
    :param output_param: ``x0_ddim`` (raw slice read as an x0 estimate, mapped onto the DDIM path from
        ``x_T``; exact at t = T) or ``state`` (raw slice is the state, as in the reference).
    :param init: `TimeConv` init (``reference`` or ``zero``); the backbone always starts from the teacher.
    :param teacher_hash: `teacher_fingerprint` of the teacher; ``teacher`` names it (path or hub id).
    :param teacher_steps: N, the teacher's DDIM steps; ``guidance_scale`` its baked-in CFG scale.
    :param num_classes: classes the student was distilled for (0: unconditional).
    :param class_names: their names (for front ends).
    """

    #: network rows (images x M slices) per call when sampling. Every image's M slices run at once,
    #: so a batch of B images is B·M rows, twice a CFG teacher's 2·B; at 28 px, 1 CPU thread, 48 rows
    #: (12 images) took about 15% less CPU time per image than 96 (24 images): the activations of a
    #: smaller group stay in cache. Images are independent, so grouping changes only float rounding.
    inference_rows_per_call: int = 48

    @register_to_config
    def __init__(
        self,
        unet_class: str,
        unet_config: dict[str, Any],
        timesteps: list[int],
        alphas_cumprod: list[float],
        alpha_cumprod_start: float,
        num_slices: int = 4,
        modes: int = 2,
        output_param: str = "x0_ddim",
        init: str = "reference",
        teacher: str = "",
        teacher_hash: str = "",
        teacher_steps: int = 0,
        guidance_scale: float = 1.0,
        num_classes: int = 0,
        class_names: list[str] | None = None,
    ):
        super().__init__()
        if unet_class not in UNET_CLASSES:
            raise ConfigError(f"DSNO students are built on {' or '.join(UNET_CLASSES)}, not {unet_class}")
        if output_param not in OUTPUT_PARAMS:
            raise ConfigError(
                f"unknown DSNO output_param {output_param!r} (known: {', '.join(OUTPUT_PARAMS)})"
            )
        if not len(timesteps) == len(alphas_cumprod) == num_slices:
            raise ConfigError(
                f"DSNO grid mismatch: num_slices {num_slices}, {len(timesteps)} timesteps, "
                f"{len(alphas_cumprod)} alphas_cumprod"
            )
        self.unet = UNET_CLASSES[unet_class].from_config(unet_config)
        points = hook_points(self.unet)
        self.tconvs = nn.ModuleList(TimeConv(channels, num_slices, modes, init) for _, channels in points)
        for (module, _), tconv in zip(points, self.tconvs):
            module.register_forward_hook(tconv.hook)
        #: the `SharedStem` of the first ResNet, or None when the teacher's first block has none
        self.shared_stem = SharedStem(num_slices) if SharedStem.applies_to(self.unet) else None
        if self.shared_stem is not None:
            self.shared_stem.attach(self.unet)

    # ---------------------------------------------------------------- building
    @classmethod
    def from_teacher(
        cls,
        unet: nn.Module,
        *,
        timesteps: list[int],
        alphas_cumprod: list[float],
        alpha_cumprod_start: float,
        **settings: Any,
    ) -> DSNOStudent:
        """A student whose backbone is a copy of the teacher's ``unet`` (which stays untouched and unhooked).

        ``settings`` are the remaining constructor fields (modes, output_param, init, teacher names...).
        """
        name = type(unet).__name__
        if name not in UNET_CLASSES:
            raise ConfigError(f"DSNO needs a UNet2DModel or UNet2DConditionModel teacher, got {name}")
        student = cls(
            unet_class=name,
            unet_config=public_config(unet.config),
            timesteps=[int(t) for t in timesteps],
            alphas_cumprod=[float(a) for a in alphas_cumprod],
            alpha_cumprod_start=float(alpha_cumprod_start),
            num_slices=len(timesteps),
            **settings,
        )
        student.unet.load_state_dict(unet.state_dict())
        student.to(unet.device)
        return student if unet.dtype == torch.float32 else student.to(unet.dtype)

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> DSNOStudent:
        """`ModelMixin.from_pretrained`, refusing overrides of what training fixed (grid, teacher...)."""
        fixed = sorted(set(kwargs) & set(FROZEN_FIELDS))
        if fixed:
            raise CheckpointError(
                f"a DSNO student's {', '.join(fixed)} are fixed by its distillation and cannot "
                "be overridden at load time; distil a new student for other settings"
            )
        return super().from_pretrained(*args, **kwargs)

    def check_compatible(
        self,
        *,
        num_slices: int | None = None,
        timesteps: list[int] | None = None,
        teacher_hash: str | None = None,
        guidance_scale: float | None = None,
    ) -> None:
        """Raise `CheckpointError` if this student was distilled for another grid, teacher or guidance."""
        expected = {
            "num_slices": num_slices,
            "timesteps": None if timesteps is None else [int(t) for t in timesteps],
            "teacher_hash": teacher_hash,
            "guidance_scale": guidance_scale,
        }
        for key, value in expected.items():
            ours = self.config[key]
            if value is not None and list(ours if isinstance(ours, (list, tuple)) else [ours]) != list(
                value if isinstance(value, (list, tuple)) else [value]
            ):
                raise CheckpointError(
                    f"this DSNO student was distilled with {key}={ours}, not {value}: it is only "
                    "valid for its own time grid, teacher and guidance scale"
                )

    # ---------------------------------------------------------------- forward
    @property
    def num_hooks(self) -> int:
        return len(self.tconvs)

    @property
    def image_channels(self) -> int:
        return int(self.unet.config.in_channels)

    def raw(
        self,
        x_T: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The backbone's output for all slices: (B, C, H, W) -> (B, M, C_out, H, W); slice m runs at t_m."""
        m = self.config.num_slices
        batch = x_T.shape[0]
        x = x_T.repeat_interleave(m, 0)  # row b·M + m
        t = torch.tensor(self.config.timesteps, device=x_T.device).repeat(batch)
        kwargs: dict[str, Any] = {}
        if class_labels is not None:
            kwargs["class_labels"] = class_labels.repeat_interleave(m, 0)
        if isinstance(self.unet, UNet2DConditionModel):
            if encoder_hidden_states is None:
                raise ConfigError("a UNet2DConditionModel student needs encoder_hidden_states")
            kwargs["encoder_hidden_states"] = encoder_hidden_states.repeat_interleave(m, 0)
        out = self.unet(x, t, **kwargs).sample  # (B·M, C_out, H, W)
        return out.unflatten(0, (batch, m))

    def forward(
        self,
        x_T: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Trajectory states (B, M, C, H, W) for the initial noise ``x_T``; ``[:, -1]`` is the sample.

        A learned-variance teacher's extra output channels are dropped (first C channels kept).
        Without gradients, images run in groups of at most ``inference_rows_per_call`` network rows.
        """
        rows = max(1, self.inference_rows_per_call // self.config.num_slices)
        if not torch.is_grad_enabled() and x_T.shape[0] > rows:
            return torch.cat(
                [
                    self(
                        x_T[i : i + rows],
                        None if class_labels is None else class_labels[i : i + rows],
                        None if encoder_hidden_states is None else encoder_hidden_states[i : i + rows],
                    )
                    for i in range(0, x_T.shape[0], rows)
                ]
            )
        raw = self.raw(x_T, class_labels, encoder_hidden_states)[:, :, : self.image_channels]
        if self.config.output_param == "state":
            return raw
        return self.states_from_x0(raw, x_T)

    def states_from_x0(self, x0: torch.Tensor, x_T: torch.Tensor) -> torch.Tensor:
        """``x0_ddim``: ε̂ = (x_T − α_T·x̂0)/σ_T and x(t_m) = α_m·x̂0 + σ_m·ε̂ (α = √ᾱ, σ = √(1 − ᾱ)).

        Exact at t = T, x̂0 itself where ᾱ = 1, and never divides by the tiny α_T.
        """
        abar = torch.tensor(self.config.alphas_cumprod, dtype=torch.float64)
        abar_T = torch.tensor(self.config.alpha_cumprod_start, dtype=torch.float64)
        shape = (1, -1, 1, 1, 1)
        alpha = abar.sqrt().view(shape).to(x0)
        sigma = (1 - abar).sqrt().view(shape).to(x0)
        eps = (x_T.unsqueeze(1) - abar_T.sqrt().to(x0) * x0) / (1 - abar_T).sqrt().to(x0)
        return alpha * x0 + sigma * eps
