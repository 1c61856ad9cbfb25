"""SAGAN and BigGAN families on the shared loop: learning on MNIST, exact resume, EMA with a start
step, D steps per G step, presets and config errors."""

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from studio.data import DataConfig, DatasetInfo, build_dataset
from studio.errors import ConfigError
from studio.hub import load_pipeline
from studio.pipelines.gan import StudioGANPipeline
from training.checkpoint import latest_checkpoint, read_checkpoint
from training.config import available_presets, load_config
from training.ema import EMA
from training.family import get_family
from training.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")


TINY_GAN_OVERRIDES = [
    "batch_size=8",
    "model.generator.width=8",
    "model.discriminator.width=8",
    "model.generator.z_dim=24",
    "num_sample_images=4",
    "sample_every=0",
    "log_every=1",
    "checkpointing_steps=1000",
]
MNIST = DatasetInfo("mnist", 28, 1, 10, tuple(str(d) for d in range(10)))


def tiny_config(family, output_dir, *overrides, preset="mnist-tiny"):
    return load_config(
        family,
        get_family(family).config_class,
        preset,
        TINY_GAN_OVERRIDES + [f"output_dir={output_dir}", *overrides],
    )


def pooled_pixels(images: torch.Tensor) -> np.ndarray:
    """Fixed features: (N, 1, 28, 28) images in [-1, 1] averaged over 4x4 cells -> (N, 49)."""
    return F.avg_pool2d(images.float(), 4).flatten(1).double().numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets (N, D) and (M, D)."""
    ridge = 1e-6 * np.eye(a.shape[1])  # MNIST's corner cells never vary
    cov_a, cov_b = np.cov(a, rowvar=False) + ridge, np.cov(b, rowvar=False) + ridge
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def sample_features(pipe: StudioGANPipeline) -> np.ndarray:
    images = pipe(num_images=400, seed=1000, output_type="pt").images * 2 - 1  # [0, 1] -> [-1, 1]
    return pooled_pixels(images)


@pytest.mark.parametrize("family", ["sagan", "biggan"])
def test_short_mnist_run_moves_sample_statistics_toward_the_data(tmp_path, family):
    config = tiny_config(
        family, tmp_path / "run", "max_steps=30", "batch_size=16", "optim.lr=2e-3", "model.d_lr=2e-3"
    )
    real = pooled_pixels(build_dataset(DataConfig(), "val").uint8_images()[:1000].float() / 127.5 - 1)
    torch.manual_seed(config.seed)  # the loop builds its networks after the same seeding
    initial = get_family(family)(config, MNIST).build_models()["generator"]
    before = frechet_distance(sample_features(StudioGANPipeline(generator=initial)), real)
    result = train(config)
    after = frechet_distance(sample_features(load_pipeline(str(result.pipeline_dir))), real)
    assert after < 0.5 * before, (before, after)
    assert all(np.isfinite(list(h.values())).all() for h in result.history)
    assert (tmp_path / "run" / "samples" / "step-000030.png").is_file()


def _checkpoint_state(run_dir):
    saved = read_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
    models, optimizers = saved["models"], saved["optimizers"]
    return (
        models["generator"],
        models["discriminator"],
        saved["extras"]["ema.generator"]["shadow"],
        [optimizers["generator"], optimizers["discriminator"]],
    )


def test_stopped_and_resumed_run_equals_uninterrupted_run(tmp_path):
    overrides = ["model.d_steps=2", "ema_start=1", "ema_decay=0.9", "checkpointing_steps=2"]
    train(tiny_config("biggan", tmp_path / "full", "max_steps=4", *overrides))
    train(tiny_config("biggan", tmp_path / "split", "max_steps=2", *overrides))
    train(
        tiny_config("biggan", tmp_path / "split", "max_steps=4", "resume_from_checkpoint=latest", *overrides)
    )
    full, split = _checkpoint_state(tmp_path / "full"), _checkpoint_state(tmp_path / "split")
    for name, a, b in zip(("generator", "discriminator", "ema"), full[:3], split[:3]):
        assert a.keys() == b.keys()
        assert any(k.endswith("parametrizations.weight.0._u") for k in a)  # SN vectors are part of the state
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    for a, b in zip(full[3], split[3]):
        for state_a, state_b in zip(a["state"].values(), b["state"].values()):
            assert torch.equal(state_a["exp_avg"], state_b["exp_avg"])
    # two D updates per G update
    generator_steps = {int(s["step"]) for s in full[3][0]["state"].values()}
    discriminator_steps = {int(s["step"]) for s in full[3][1]["state"].values()}
    assert generator_steps == {4} and discriminator_steps == {8}


def test_ema_follows_the_update_rule_with_a_start_step():
    torch.manual_seed(0)
    family = get_family("biggan")(
        load_config(
            "biggan",
            get_family("biggan").config_class,
            "mnist-tiny",
            ["model.generator.width=8", "model.generator.z_dim=24"],
        ),
        MNIST,
    )
    generator = family.build_generator()
    ema = EMA(generator, decay=0.9, start_step=3, warmup=False)

    def train_a_little():
        with torch.no_grad():
            for param in generator.parameters():
                param.add_(torch.randn_like(param) * 0.1)
        generator(torch.randn(8, 24), torch.arange(8))  # moves BN statistics and SN vectors

    for step in (1, 2):  # before the start step the average copies the generator
        train_a_little()
        ema.update(generator, step)
        for key, value in generator.state_dict().items():
            assert torch.equal(ema.shadow.state_dict()[key], value), key
    old = {k: v.clone() for k, v in ema.shadow.state_dict().items()}
    train_a_little()
    ema.update(generator, 3)
    new = generator.state_dict()
    for key, value in ema.shadow.state_dict().items():
        if value.dtype.is_floating_point:
            assert torch.allclose(value, 0.9 * old[key] + 0.1 * new[key], atol=1e-6), key
        else:
            assert torch.equal(value, new[key]), key  # e.g. BN num_batches_tracked
    assert not torch.equal(
        ema.shadow.state_dict()["linear.parametrizations.weight.original"],
        new["linear.parametrizations.weight.original"],
    )


def test_unconditional_sagan_trains_and_exports_before_ema_start(tmp_path):
    config = tiny_config("sagan", tmp_path / "run", "max_steps=2", "model.conditional=false", "ema_start=100")
    result = train(config)
    pipe = load_pipeline(str(result.pipeline_dir))
    assert pipe.num_classes == 0 and pipe.family == "sagan"
    assert pipe(num_images=2, seed=0, output_type="np").record.class_labels is None
    raw = read_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))["models"]["generator"]
    exported = pipe.generator.state_dict()  # EMA before its start step: an exact copy of G ...
    weights = [k for k in raw if not k.endswith(("._u", "._v"))]  # ... up to refreshed SN vectors
    assert len(weights) < len(raw) and all(torch.equal(raw[k], exported[k]) for k in weights)


def test_pipelines_refresh_the_spectral_norm_vectors_an_average_shortens():
    torch.manual_seed(0)
    family = get_family("sagan")(
        load_config(
            "sagan",
            get_family("sagan").config_class,
            "mnist-tiny",
            ["model.generator.width=8", "model.generator.z_dim=24"],
        ),
        MNIST,
    )
    generator = family.build_generator()
    ema = EMA(generator, decay=0.5, start_step=0, warmup=False)
    with torch.no_grad():  # move G far enough that its top singular vectors turn
        for param in generator.parameters():
            if param.ndim >= 2:
                param.copy_(torch.randn_like(param) * param.std())
        for _ in range(20):
            generator(torch.randn(4, 24), torch.arange(4))
    ema.update(generator, 1)  # lerps the unit u / v vectors into shorter ones
    shadow_state = {k: v.clone() for k, v in ema.shadow.state_dict().items()}

    def sigmas(model):
        model.eval()
        return [
            torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2).item()
            for m in model.modules()
            if hasattr(m, "parametrizations")
        ]

    assert max(sigmas(ema.shadow)) > 1.05  # eval-mode SN of the raw average is off
    pipe = family.make_pipeline({"generator": ema.shadow})
    assert all(s == pytest.approx(1.0, abs=0.01) for s in sigmas(pipe.generator))
    changed = [k for k, v in ema.shadow.state_dict().items() if not torch.equal(v, shadow_state[k])]
    assert not changed  # the EMA itself is untouched


@pytest.mark.parametrize("family", ["sagan", "biggan"])
def test_every_preset_loads_and_builds(family):
    presets = available_presets()[family]
    assert {"mnist-tiny", "mnist-small", "photos-small"} <= set(presets)
    for preset in presets:
        config = load_config(family, get_family(family).config_class, preset)
        assert config.optim.betas[0] == 0.0 and config.optim.grad_clip == 0.0
        data = config.data
        photos = data.name == "photos"
        info = DatasetInfo(data.name, data.image_size, 3 if photos else 1, 6 if photos else 10, ())
        models = get_family(family)(config, info).build_models()
        images = models["generator"](torch.randn(2, config.model.generator.z_dim), torch.tensor([0, 1]))
        assert images.shape == (2, info.channels, data.image_size, data.image_size)


def test_bad_presets_and_settings_give_clear_errors():
    sagan = get_family("sagan")
    with pytest.raises(ConfigError, match="unknown preset 'mnist-huge' for family 'sagan'"):
        load_config("sagan", sagan.config_class, "mnist-huge")
    with pytest.raises(ConfigError, match="bad configuration"):
        load_config("sagan", sagan.config_class, "mnist-tiny", ["model.no_such_key=1"])

    def family_for(name, *overrides, info=MNIST):
        cls = get_family(name)
        return cls(load_config(name, cls.config_class, "mnist-tiny", list(overrides)), info)

    with pytest.raises(ConfigError, match="gradient accumulation"):
        family_for("sagan", "gradient_accumulation_steps=2")
    with pytest.raises(ConfigError, match="must split into model.d_steps=3"):
        family_for("biggan", "batch_size=32", "model.d_steps=3")
    with pytest.raises(ConfigError, match="has no classes"):
        family_for("sagan", info=DatasetInfo("folder", 28, 1, 0, ()))
    with pytest.raises(ConfigError, match="no feature map of side 7"):
        family_for("sagan", "model.generator.attention_resolution=7").build_models()
    with pytest.raises(ConfigError, match="not divisible by 3"):
        family_for("biggan", "model.generator.z_dim=50").build_models()
    with pytest.raises(ConfigError, match="image sizes"):
        family_for("biggan", info=DatasetInfo("mnist", 20, 1, 10, ())).build_models()
    with pytest.raises(ConfigError, match="truncation_threshold"):
        family_for("biggan", "model.truncation_threshold=-1")
