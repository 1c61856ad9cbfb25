"""The shared training loop on the DiT family: loss falls, exact resume, atomic checkpoints."""

import pytest
import torch

from studio.errors import CheckpointError, ConfigError
from studio.hub import load_pipeline, read_card
from studio.pipelines.record import read_record
from tests.builders import TINY_DIT_OVERRIDES
from training.checkpoint import latest_checkpoint, read_checkpoint
from training.config import load_config
from training.family import get_family
from training.loop import train


def tiny_config(output_dir, *overrides):
    family = get_family("dit")
    return load_config(
        "dit",
        family.config_class,
        "mnist-tiny",
        TINY_DIT_OVERRIDES + [f"output_dir={output_dir}", *overrides],
    )


def test_dit_tiny_loss_falls(tmp_path):
    result = train(tiny_config(tmp_path / "run", "max_steps=60", "optim.lr=1e-3", "checkpointing_steps=60"))
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 60
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.8 * first, (first, last)
    pipe = load_pipeline(str(result.pipeline_dir))
    assert pipe.transformer.config.sample_size == 16
    grid = read_record(str(tmp_path / "run" / "samples" / "step-000060.png"))
    settings = {
        "num_inference_steps": grid.steps,
        "scheduler": grid.sampler,
        "guidance_scale": grid.guidance_scale,
    }
    assert (
        read_card(result.pipeline_dir)["sampling"] == settings
    )  # the run samples as its grids did until scored
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert list((tmp_path / "run" / "logs").rglob("events.out.tfevents*"))


@pytest.mark.parametrize("objective", [["model.prediction_type=v_prediction"], ["model.snr_gamma=5"]])
def test_v_prediction_and_min_snr_objectives_train_and_sample(tmp_path, objective):
    result = train(
        tiny_config(
            tmp_path / "run",
            "max_steps=40",
            "optim.lr=1e-3",
            "checkpointing_steps=40",
            "sample_every=0",
            *objective,
        )
    )
    losses = [h["loss"] for h in result.history]
    assert sum(losses[-8:]) / 8 < 0.8 * sum(losses[:8]) / 8
    pipe = load_pipeline(str(result.pipeline_dir))
    expected = "v_prediction" if "v_prediction" in objective[0] else "epsilon"
    assert pipe.scheduler.config.prediction_type == expected
    image = pipe(class_labels=[3], num_inference_steps=4, scheduler="euler", output_type="pt").images
    assert torch.isfinite(image).all()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_follow_the_formula(prediction_type):
    config = load_config(
        "dit",
        get_family("dit").config_class,
        "mnist-tiny",
        ["model.snr_gamma=5", f"model.prediction_type={prediction_type}"],
    )
    family = get_family("dit")(config, _mnist_info())
    timesteps = torch.tensor([0, 200, 500, 999])
    target = torch.zeros(4, 1, 2, 2)
    prediction = torch.ones(4, 1, 2, 2)  # per-example MSE 1, so the loss is the mean weight
    alphas = family.noise_scheduler.alphas_cumprod[timesteps]
    snr = alphas / (1 - alphas)
    denominator = snr + 1 if prediction_type == "v_prediction" else snr
    expected = (torch.clamp(snr, max=5.0) / denominator).mean()
    assert torch.allclose(family.weighted_mse(prediction, target, timesteps), expected)
    assert expected < 1.0  # the low-noise steps (SNR > 5) really are down-weighted


def _state(run_dir):
    saved = read_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
    return (
        saved["models"]["transformer"],
        saved["extras"]["ema.transformer"]["shadow"],
        saved["optimizers"]["transformer"],
    )


def test_stopped_and_resumed_run_equals_uninterrupted_run(tmp_path):
    train(tiny_config(tmp_path / "full", "max_steps=6", "checkpointing_steps=3"))
    train(tiny_config(tmp_path / "split", "max_steps=3", "checkpointing_steps=3"))
    train(
        tiny_config(
            tmp_path / "split", "max_steps=6", "checkpointing_steps=3", "resume_from_checkpoint=latest"
        )
    )
    full, split = _state(tmp_path / "full"), _state(tmp_path / "split")
    for a, b in zip(full[:2], split[:2]):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    exp_avg = [s["exp_avg"] for s in full[2]["state"].values()]
    assert all(torch.equal(x, y["exp_avg"]) for x, y in zip(exp_avg, split[2]["state"].values()))


def test_time_budget_stops_with_a_loadable_checkpoint(tmp_path):
    result = train(tiny_config(tmp_path / "run", "max_steps=100000", "time_budget_minutes=0.02"))
    assert 0 < result.step < 100000
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == f"checkpoint-{result.step}"
    load_pipeline(str(tmp_path / "run"))


def test_checkpoints_are_pruned_and_half_written_ones_ignored(tmp_path):
    train(tiny_config(tmp_path / "run", "max_steps=4", "checkpointing_steps=1", "checkpoints_total_limit=2"))
    folder = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-3", "checkpoint-4"]
    (folder / "checkpoint-9.tmp").mkdir()  # a save that died midway
    assert latest_checkpoint(folder).name == "checkpoint-4"


def _mnist_info():
    from studio.data import DataConfig
    from studio.data.dataset import dataset_info

    return dataset_info(DataConfig(name="mnist", image_size=16))


def test_bad_configs_are_refused_with_names():
    family = get_family("dit")
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("dit", family.config_class, "mnist-huge")
    with pytest.raises(ConfigError, match="bad configuration"):
        load_config("dit", family.config_class, "mnist-tiny", ["model.no_such_key=1"])
    with pytest.raises(ConfigError, match="bad configuration"):
        load_config("dit", family.config_class, "mnist-tiny", ["max_steps=many"])
    with pytest.raises(ConfigError, match="prediction_type 'x0'"):
        get_family("dit")(
            load_config("dit", family.config_class, "mnist-tiny", ["model.prediction_type=x0"]), _mnist_info()
        )
    with pytest.raises(ConfigError, match="unknown model family"):
        get_family("vqgan")


def test_resume_from_a_missing_checkpoint_path_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        train(tiny_config(tmp_path / "run", "max_steps=2", f"resume_from_checkpoint={tmp_path}/nowhere"))


def test_bf16_mixed_precision_trains_on_cpu(tmp_path):
    result = train(
        tiny_config(tmp_path / "run", "max_steps=2", "mixed_precision=bf16", "checkpointing_steps=2")
    )
    assert result.step == 2 and all(h["loss"] == h["loss"] for h in result.history)


def test_xformers_request_without_cuda_says_why(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="xformers"):
        train(tiny_config(tmp_path / "run", "max_steps=1", "attention=xformers"))


def test_in_loop_evaluation_logs_metrics(tmp_path):
    result = train(
        tiny_config(
            tmp_path / "run",
            "max_steps=2",
            "eval_every=2",
            "eval_num_images=20",
            "eval_metrics=acc,dfd",
            "checkpointing_steps=2",
        )
    )
    scores = result.history[-1]
    assert 0.0 <= scores["eval/class_accuracy"] <= 1.0 and scores["eval/domain_fd"] > 0
    assert "eval/class_accuracy" not in result.history[0]


def test_init_from_starts_a_run_at_a_checkpoints_weights(tmp_path):
    """Fine-tuning: the run starts at the checkpoint's weights (model and EMA), not a fresh init (its first
    step runs at warm-up LR 0, so the saved state is the starting point)."""
    first = train(tiny_config(tmp_path / "a", "max_steps=2", "checkpointing_steps=2"))
    source = load_pipeline(str(first.pipeline_dir)).transformer.state_dict()
    train(
        tiny_config(
            tmp_path / "b",
            "max_steps=1",
            "checkpointing_steps=1",
            "optim.warmup_steps=10",
            f"init_from={first.pipeline_dir}",
        )
    )
    model, shadow, _ = _state(tmp_path / "b")
    assert source.keys() == model.keys()
    assert all(torch.equal(source[k], model[k]) and torch.equal(source[k], shadow[k]) for k in source)
    fresh, _, _ = _state(tmp_path / "a")
    assert not all(torch.equal(fresh[k], model[k]) for k in source)  # really the export (EMA), not a re-init


def test_init_from_refuses_another_architecture_and_a_missing_checkpoint(tmp_path):
    first = train(tiny_config(tmp_path / "a", "max_steps=1", "checkpointing_steps=1"))
    with pytest.raises(ConfigError, match="'transformer' of .* has another architecture"):
        train(
            tiny_config(
                tmp_path / "b", "max_steps=1", "model.network.depth=2", f"init_from={first.pipeline_dir}"
            )
        )
    with pytest.raises(CheckpointError):
        train(tiny_config(tmp_path / "c", "max_steps=1", f"init_from={tmp_path / 'nothing-here'}"))
