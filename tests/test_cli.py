"""`studio` commands end to end: train, sample (resumable, sharded), models, and bad input."""

import json

import numpy as np
import pytest
from PIL import Image

from studio.hub import load_pipeline, save_pipeline
from studio_cli import main
from tests.builders import TINY_DIT_OVERRIDES, tiny_dit_pipeline
from tests.launch import REPO, launch_two_processes
from training.checkpoint import read_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-dit"
    save_pipeline(tiny_dit_pipeline(), folder, {"preset": "test", "trained_steps": 0, "dataset": "mnist"})
    return folder


def run_cli(*args: str, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = [line for line in err.strip().splitlines() if not line.startswith(("Loading", "sampling"))]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0]


def test_sample_writes_pngs_npz_grid_and_resumes(checkpoint, tmp_path, capsys):
    out = tmp_path / "samples"
    args = [
        "sample",
        checkpoint,
        "--num-images",
        6,
        "--batch-size",
        4,
        "--out",
        out,
        "--seed",
        0,
        "--steps",
        3,
        "--scheduler",
        "ddim",
        "--guidance-scale",
        4,
        "--class-labels",
        3,
    ]
    code, stdout, _ = run_cli(*args, capsys=capsys)
    assert code == 0 and "6 images" in stdout
    assert sorted(p.name for p in out.glob("0*.png")) == [f"{i:06d}.png" for i in range(6)]
    data = np.load(out / "samples.npz")
    assert data["images"].shape == (6, 16, 16, 1) and (data["class_labels"] == 3).all()
    assert list(data["seeds"]) == list(range(6))
    with Image.open(out / "000004.png") as image:
        record = json.loads(image.text["studio"])
    assert record["seeds"] == [4] and record["steps"] == 3 and record["sampler"] == "ddim"
    assert record["guidance_scale"] == 4.0 and record["class_labels"] == [3]
    assert (out / "grid.png").is_file() and len((out / "manifest.jsonl").read_text().splitlines()) == 6

    mtime = (out / "000000.png").stat().st_mtime_ns
    (out / "000005.png").unlink()
    code, stdout, _ = run_cli(*args[:3], 8, *args[4:], capsys=capsys)
    assert code == 0 and "5 already there" in stdout
    assert (out / "000000.png").stat().st_mtime_ns == mtime  # existing images were not redone
    again = np.load(out / "samples.npz")["images"]
    assert again.shape[0] == 8 and np.array_equal(
        again[:6], data["images"]
    )  # regenerated image 5 is identical


def test_models_lists_runs(checkpoint, runs_dir, capsys):
    save_pipeline(
        tiny_dit_pipeline(), runs_dir / "my-run" / "pipeline", {"trained_steps": 7, "dataset": "mnist"}
    )
    code, stdout, _ = run_cli("models", capsys=capsys)
    assert code == 0 and "my-run" in stdout and "dit" in stdout and "7" in stdout


@pytest.mark.parametrize(
    "args,needles",
    [
        (["train", "vqgan", "--preset", "x"], ["unknown model family 'vqgan'"]),
        (["train", "dit", "--preset", "mnist-huge"], ["unknown preset 'mnist-huge'", "mnist-tiny"]),
        (["train", "dit", "--preset", "mnist-tiny", "data.image_size=30"], ["not divisible"]),
        (["train", "dit", "--preset", "mnist-tiny", "model.depht=3"], ["bad configuration", "depht"]),
        (["sample", "/nonexistent/ckpt", "--out", "o"], ["does not exist"]),
        (["sample", "no-such-model", "--out", "o"], ["unknown model 'no-such-model'"]),
    ],
)
def test_bad_input_gives_one_line_errors(args, needles, capsys, tmp_path, runs_dir):
    code, _, err = run_cli(*args, capsys=capsys)
    assert_one_line_error(code, err, *needles)


def test_empty_dataset_folder_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(
        "train",
        "dit",
        "--preset",
        "mnist-tiny",
        "--dataset",
        tmp_path / "empty",
        "--output-dir",
        tmp_path / "run",
        capsys=capsys,
    )
    assert_one_line_error(code, err, "holds no images")


@pytest.mark.parametrize(
    "extra,needles",
    [
        (["--class-labels", "three"], ["integers"]),
        (["--class-labels", "10"], ["out of range", "0..9"]),
        (["--scheduler", "nope"], ["unknown scheduler 'nope'"]),
        (["--truncation", "0.5"], ["--truncation does not apply to dit"]),
    ],
)
def test_bad_sampling_requests_keep_existing_images(checkpoint, tmp_path, capsys, extra, needles):
    out = tmp_path / "samples"
    assert run_cli("sample", checkpoint, "--num-images", 2, "--steps", 2, "--out", out, capsys=capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = run_cli(
        "sample", checkpoint, "--num-images", 4, "--steps", 2, "--out", out, *extra, capsys=capsys
    )
    assert_one_line_error(code, err, *needles)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_corrupt_checkpoint_is_named(checkpoint, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    weights = next((broken / "transformer").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    code, _, err = run_cli("sample", broken, "--out", tmp_path / "o", capsys=capsys)
    assert_one_line_error(code, err, "cannot load checkpoint")


@pytest.mark.slow
def test_two_process_sampling_shards_and_matches_one_process(checkpoint, tmp_path, capsys):
    common = ["--num-images", "10", "--batch-size", "3", "--steps", "2", "--class-labels", "0,1,2"]
    result = launch_two_processes(
        "sample", str(checkpoint), "--out", str(tmp_path / "two"), *common, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("sampling (process 1)") > 0  # the second process really sampled
    assert run_cli("sample", checkpoint, "--out", tmp_path / "one", *common, capsys=capsys)[0] == 0
    two, one = np.load(tmp_path / "two" / "samples.npz"), np.load(tmp_path / "one" / "samples.npz")
    assert np.array_equal(two["images"], one["images"]) and np.array_equal(two["seeds"], one["seeds"])


@pytest.mark.slow
def test_two_process_training_runs_and_checkpoints(tmp_path):
    result = launch_two_processes(
        "train",
        "dit",
        "--preset",
        "mnist-tiny",
        "--max-steps",
        "3",
        "--output-dir",
        str(tmp_path / "run"),
        "--checkpointing-steps",
        "3",
        *TINY_DIT_OVERRIDES,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-3"
    assert (checkpoint / "rng_state_0.safetensors").is_file() and (
        checkpoint / "rng_state_1.safetensors"
    ).is_file()
    assert (tmp_path / "run" / "pipeline" / "model_index.json").is_file()


@pytest.mark.slow
def test_two_process_gan_training_runs_and_checkpoints(tmp_path):
    """BigGAN under DDP: two models, D frozen during the G step, per-process batch norm."""
    result = launch_two_processes(
        "train",
        "biggan",
        "--preset",
        "mnist-tiny",
        "--max-steps",
        "3",
        "--output-dir",
        str(tmp_path / "run"),
        "--checkpointing-steps",
        "3",
        "batch_size=8",
        "model.generator.width=8",
        "model.discriminator.width=8",
        "model.generator.z_dim=24",
        "num_sample_images=4",
        "sample_every=0",
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-3"
    assert (checkpoint / "rng_state_1.safetensors").is_file()
    assert set(read_checkpoint(checkpoint)["models"]) == {"generator", "discriminator"}
    pipe = load_pipeline(str(tmp_path / "run"))
    assert np.isfinite(np.asarray(pipe(class_labels=[1, 2], output_type="np").images)).all()


def test_bench_runs_a_bench_script_and_names_unknown_ones(capsys):
    assert_one_line_error(
        *run_cli("bench", "nope", capsys=capsys)[::2], "unknown benchmark 'nope'", "plugins"
    )
    with pytest.raises(SystemExit) as exit_info:  # argparse of bench/plugins.py itself
        main(["bench", "plugins", "--help"])
    assert exit_info.value.code == 0
    assert "--quality-images" in capsys.readouterr().out


@pytest.mark.slow
def test_two_process_adm_training_runs_and_checkpoints(tmp_path):
    """ADM under DDP: learned-sigma hybrid loss, null-class dropout, EMA, one checkpoint per process."""
    result = launch_two_processes(
        "train",
        "adm",
        "--preset",
        "mnist-tiny",
        "--max-steps",
        "3",
        "--output-dir",
        str(tmp_path / "run"),
        "--checkpointing-steps",
        "3",
        "batch_size=8",
        "data.image_size=16",
        "model.network.attention_resolutions=[8]",
        "model.network.model_channels=8",
        "model.network.head_channels=8",
        "sample_every=0",
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-3"
    assert (checkpoint / "rng_state_0.safetensors").is_file() and (
        checkpoint / "rng_state_1.safetensors"
    ).is_file()
    pipe = load_pipeline(str(tmp_path / "run"))
    images = pipe(class_labels=[1, 2], num_inference_steps=2, scheduler="ddim", output_type="np").images
    assert np.isfinite(np.asarray(images)).all()


def test_train_flags_come_from_the_typed_config():
    """Every scalar TrainConfig field is a `studio train` flag (plus shortcuts into data and optim), so the
    flags cannot drift from the config; the flags of earlier releases keep their names and keys."""
    import dataclasses

    from training.command import TRAIN_FLAGS
    from training.config import TrainConfig

    keys = {key for key, _ in TRAIN_FLAGS.values()}
    scalars = {
        f.name
        for f in dataclasses.fields(TrainConfig)
        if f.name not in ("family", "preset", "data", "optim", "model")
    }
    assert scalars <= keys
    earlier = {
        "max_steps": "max_steps",
        "batch_size": "batch_size",
        "output_dir": "output_dir",
        "seed": "seed",
        "resume_from_checkpoint": "resume_from_checkpoint",
        "init_from": "init_from",
        "mixed_precision": "mixed_precision",
        "gradient_accumulation_steps": "gradient_accumulation_steps",
        "time_budget": "time_budget_minutes",
        "device": "device",
        "attention": "attention",
        "checkpointing_steps": "checkpointing_steps",
        "sample_every": "sample_every",
        "dataset": "data.name",
        "image_size": "data.image_size",
        "lr": "optim.lr",
    }
    assert {flag: TRAIN_FLAGS[flag][0] for flag in earlier} == earlier
