"""``studio eval`` through its argparse parser: inputs (npz, studio PNGs), JSON output, clear errors.

A tiny TorchScript network stands in for Inception (``--feature-net``), so the tests stay fast.
"""

import argparse
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from studio.data import DataConfig, build_dataset
from studio.errors import MetricError, StudioError
from studio.metrics.command import add_parser
from studio.pipelines.record import GenerationRecord, save_png


class TinyFeatureNet(nn.Module):
    """(N, 3, 32, 32) -> (N, 8, 8, 8): spatial features, averaged by the extractor."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 4, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


def run_eval(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="studio")
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["eval", *argv])
    return args.func(args)


@pytest.fixture(scope="module")
def feature_net(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("net") / "tiny.pt"
    with warnings.catch_warnings():  # torch 2.9+ deprecates TorchScript; user feature nets still come as it
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(TinyFeatureNet().eval()), str(path))
    return str(path)


@pytest.fixture(scope="module")
def train_digits():
    """64 random training digits with labels (the splits are sorted by class); the tests' reference is val."""
    train = build_dataset(DataConfig(name="mnist-5k"), "train")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:64]
    return train.uint8_images()[order], train.labels[order].numpy()


def write_npz(path, images: torch.Tensor, labels: np.ndarray | None = None) -> str:
    arrays = {"images": images.permute(0, 2, 3, 1).numpy()}  # (N, H, W, C), as `studio sample` writes
    if labels is not None:
        arrays["class_labels"] = labels
    np.savez(path, **arrays)
    return str(path)


def test_eval_npz_all_metrics_writes_json_with_settings(tmp_path, feature_net, train_digits, capsys):
    images, labels = train_digits
    samples = write_npz(tmp_path / "samples.npz", images, labels)
    out = tmp_path / "results.json"
    argv = [samples, "--reference", "mnist-5k", "--reference-split", "val", "--metrics", "all"]
    argv += ["--feature-net", feature_net, "--feature-size", "32", "--kid-subset-size", "50"]
    argv += ["--cache-dir", str(tmp_path / "cache")]
    assert run_eval(*argv, "--out", str(out)) == 0
    result = json.loads(out.read_text())
    metrics, settings = result["metrics"], result["settings"]
    assert set(metrics) == {
        "fid", "kid", "kid_std", "precision", "recall", "density", "coverage",
        "class_accuracy", "classifier_score", "domain_fd", "mem_nn_distance", "mem_near_copy_share",
        "background_grain", "background_grain_reference",
    }  # fmt: skip
    assert metrics["class_accuracy"] >= 0.95 and metrics["mem_near_copy_share"] == 0.0
    assert settings["num_samples"] == 64 and settings["feature_net"]["name"] == "torchscript:tiny.pt"
    assert settings["reference"]["split"] == "val" and settings["reference"]["count"] == 500
    assert settings["kid"] == {"subsets": 100, "subset_size": 50}
    printed = capsys.readouterr().out
    assert "class_accuracy" in printed and "reference: mnist-5k:val (n=500" in printed


def test_eval_reads_class_labels_from_studio_pngs_and_skips_grids(tmp_path, train_digits):
    images, labels = train_digits
    for i in range(20):
        record = GenerationRecord(model="test", family="test", seeds=[i], class_labels=[int(labels[i])])
        save_png(images[i].permute(1, 2, 0).numpy(), str(tmp_path / f"{i:06d}.png"), record)
    grid = GenerationRecord(model="test", family="test", seeds=[0, 1], class_labels=[0, 1])
    save_png(np.zeros((60, 60, 1), dtype=np.uint8), str(tmp_path / "grid.png"), grid)
    out = tmp_path / "out" / "results.json"
    argv = [str(tmp_path), "--reference", "mnist-5k", "--reference-split", "val", "--metrics", "acc"]
    assert run_eval(*argv, "--out", str(out)) == 0
    result = json.loads(out.read_text())
    assert result["settings"]["num_samples"] == 20  # the grid is not a sample
    assert result["metrics"]["class_accuracy"] >= 0.9  # labels read wrongly would give about 0.1


def save_plain_png(path, size: int) -> None:
    Image.fromarray(np.zeros((size, size), dtype=np.uint8)).save(path)


def bad_folder(kind: str, root) -> str:
    folder = root / kind
    folder.mkdir()
    if kind == "mixed-sizes":
        save_plain_png(folder / "a.png", 28)
        save_plain_png(folder / "b.png", 32)
    elif kind == "non-images":
        (folder / "notes.txt").write_text("not an image")
        (folder / "data.csv").write_text("1,2,3")
    elif kind == "corrupt-png":
        (folder / "broken.png").write_bytes(b"not a png")
    return str(folder)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("empty", r"holds no images"),
        ("mixed-sizes", r"different sizes.*28x28x1 \(1 images, e\.g\. a\.png\).*32x32x1"),
        ("non-images", r"holds no images \(it holds 2 other files\)"),
        ("corrupt-png", r"cannot read image .*broken\.png"),
    ],
)
def test_unusable_sample_folders_raise_clear_errors(tmp_path, kind, message):
    with pytest.raises(MetricError, match=message):
        run_eval(
            bad_folder(kind, tmp_path),
            "--reference",
            "mnist-5k",
            "--reference-split",
            "val",
            "--metrics",
            "mem",
        )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--metrics", "pr", "--feature-net", "{net}", "--feature-size", "32"],
            r"k=3 needs more than 3 images",
        ),
        (
            ["--metrics", "kid", "--feature-net", "{net}", "--feature-size", "32", "--num-samples", "1"],
            r"KID needs at least 2 images",
        ),
        (["--metrics", "mem", "--num-samples", "10"], r"asked for 10 samples but .* holds only 3"),
        (["--metrics", "fid,sharpness"], r"unknown metric\(s\) sharpness; choose from fid, kid"),
        (["--metrics", "acc"], r"class accuracy needs the requested class of every sample"),
        (["--metrics", "mem", "--image-size", "32"], r"mem compares pixels.*\(1, 28, 28\).*\(1, 32, 32\)"),
        (["--metrics", "fid", "--feature-net", "missing.pt"], r"feature network missing\.pt does not exist"),
    ],
)
def test_too_few_samples_and_bad_options_raise_clear_errors(
    tmp_path, feature_net, train_digits, argv, message
):
    samples = write_npz(tmp_path / "three.npz", train_digits[0][:3])  # no class labels
    argv = [a.replace("{net}", feature_net) for a in argv]
    with pytest.raises(StudioError, match=message):
        run_eval(samples, "--reference", "mnist-5k", "--reference-split", "val", "--cache-dir", "none", *argv)


def test_domain_metrics_without_a_classifier_name_the_fix(tmp_path, train_digits):
    reference = write_npz(tmp_path / "reference.npz", train_digits[0][:32])
    samples = write_npz(tmp_path / "samples.npz", train_digits[0][32:])
    with pytest.raises(MetricError, match=r"none is shipped for reference .*; pass --classifier FOLDER"):
        run_eval(samples, "--reference", reference, "--metrics", "dfd", "--cache-dir", "none")
