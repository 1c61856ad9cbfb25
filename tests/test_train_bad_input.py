"""Bad `studio train` input: every row is refused with one `error: ...` line naming the problem,
exit status 2, and nothing written (before: tracebacks such as ZeroDivisionError, or a run that
printed a checkpoint path that does not exist)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from studio_cli import main

MALFORMED_YAML = "family: dit\nmodel: [depth: 2\n"

# (id, family, preset, arguments after the preset, words the error line must contain)
CASES = [
    (
        "checkpointing-steps-0",
        "dit",
        "mnist-tiny",
        ["--checkpointing-steps", "0"],
        ["checkpointing_steps", "got 0"],
    ),
    ("batch-size-0", "dit", "mnist-tiny", ["--batch-size", "0"], ["batch_size", ">= 1"]),
    (
        "grad-accumulation-0",
        "dit",
        "mnist-tiny",
        ["--gradient-accumulation-steps", "0"],
        ["gradient_accumulation_steps", ">= 1"],
    ),
    ("lr-nan", "dit", "mnist-tiny", ["--lr", "nan"], ["optim.lr", "nan"]),
    ("lr-inf", "sagan", "mnist-tiny", ["--lr", "inf"], ["optim.lr", "inf"]),
    ("lr-negative", "dit", "mnist-tiny", ["optim.lr=-1e-4"], ["optim.lr", "> 0"]),
    ("malformed-yaml", "dit", "{malformed}", [], ["not valid YAML", "at line 3, column 1"]),
    ("yaml-list", "dit", "{list}", [], ["must be a mapping"]),
    ("dit-depth-0", "dit", "mnist-tiny", ["model.network.depth=0"], ["model.network.depth", "got 0"]),
    ("dit-heads-0", "dit", "mnist-tiny", ["model.network.num_heads=0"], ["model.network.num_heads"]),
    ("dit-patch-0", "dit", "mnist-tiny", ["model.network.patch_size=0"], ["model.network.patch_size"]),
    ("dit-flat-key", "dit", "mnist-tiny", ["model.depth=2"], ["model.depth moved to model.network.depth"]),
    ("sagan-width-0", "sagan", "mnist-tiny", ["model.generator.width=0"], ["model.generator.width"]),
    (
        "sagan-d-width-0",
        "sagan",
        "mnist-tiny",
        ["model.discriminator.width=0"],
        ["model.discriminator.width"],
    ),
    ("sagan-z-dim-0", "sagan", "mnist-tiny", ["model.generator.z_dim=0"], ["model.generator.z_dim"]),
    (
        "sagan-flat-key",
        "sagan",
        "mnist-tiny",
        ["model.width=8"],
        ["model.width moved to model.generator.width and model.discriminator.width"],
    ),
    ("sagan-d-lr-nan", "sagan", "mnist-tiny", ["model.d_lr=nan"], ["model.d_lr"]),
    (
        "biggan-shared-dim-0",
        "biggan",
        "mnist-tiny",
        ["model.generator.shared_dim=0"],
        ["model.generator.shared_dim"],
    ),
    (
        "adm-channels-0",
        "adm",
        "mnist-tiny",
        ["model.network.model_channels=0"],
        ["model.network.model_channels"],
    ),
    (
        "adm-norm-groups-0",
        "adm",
        "mnist-tiny",
        ["model.network.norm_groups=0"],
        ["model.network.norm_groups"],
    ),
    (
        "adm-layers-0",
        "adm",
        "mnist-tiny",
        ["model.network.layers_per_block=0"],
        ["model.network.layers_per_block"],
    ),
    ("adm-dropout-2", "adm", "mnist-tiny", ["model.network.dropout=2"], ["model.network.dropout"]),
    (
        "adm-classifier-head-0",
        "adm_classifier",
        "mnist-tiny",
        ["model.network.head_channels=0"],
        ["model.network.head_channels"],
    ),
    (
        "classifier-width-0",
        "classifier",
        "mnist",
        ["model.network.block_channels=[16,0]"],
        ["model.network.block_channels"],
    ),
    (
        "classifier-features-0",
        "classifier",
        "mnist",
        ["model.network.feature_dim=0"],
        ["model.network.feature_dim"],
    ),
    (
        "score-no-blocks",
        "score",
        "mnist-tiny",
        ["model.network.block_out_channels=[]", "model.network.attention_levels=[]"],
        ["model.network.block_out_channels"],
    ),
    (
        "score-groups-0",
        "score",
        "mnist-tiny",
        ["model.network.norm_num_groups=0"],
        ["model.network.norm_num_groups"],
    ),
    ("dsno-slices-0", "dsno", "mnist-tiny", ["model.network.num_slices=0"], ["model.network.num_slices"]),
    ("dsno-modes-0", "dsno", "mnist-tiny", ["model.network.modes=0"], ["model.network.modes"]),
    ("dsno-flat-key", "dsno", "mnist-tiny", ["model.modes=2"], ["model.modes moved to model.network.modes"]),
    (
        "controlnet-controls-0",
        "controlnet",
        "mnist-tiny",
        ["model.sample_controls=0"],
        ["model.sample_controls"],
    ),
    ("seed-negative", "dit", "mnist-tiny", ["--seed", "-1"], ["seed", "got -1"]),
    (
        "seed-overflow",
        "dit",
        "mnist-tiny",
        ["--seed", "1180591620717411303424"],
        ["seed", "1180591620717411303424"],
    ),
    ("ema-decay-2", "dit", "mnist-tiny", ["ema_decay=2"], ["ema_decay", "[0, 1)"]),
    ("ema-decay-nan", "biggan", "mnist-tiny", ["ema_decay=nan"], ["ema_decay"]),
    ("one-beta", "dit", "mnist-tiny", ["optim.betas=[0.9]"], ["optim.betas", "[0.9]"]),
    ("beta-one", "dit", "mnist-tiny", ["optim.betas=[0.9,1.0]"], ["optim.betas"]),
    ("max-steps-negative", "dit", "mnist-tiny", ["--max-steps", "-1"], ["max_steps", "got -1"]),
    ("log-every-0", "dit", "mnist-tiny", ["log_every=0"], ["log_every"]),
    ("out-is-a-file", "dit", "mnist-tiny", ["--out", "{file}"], ["is a file"]),
    ("output-dir-is-a-file", "sagan", "mnist-tiny", ["--output-dir", "{file}"], ["is a file"]),
    ("output-dir-under-a-file", "dit", "mnist-tiny", ["--output-dir", "{file}/run"], ["is a file"]),
]


def fill(text: str, tmp_path: Path) -> str:
    return text.format(file=tmp_path / "a-file", malformed=tmp_path / "bad.yaml", list=tmp_path / "list.yaml")


@pytest.mark.parametrize(
    ("family", "preset", "extra", "needles"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_bad_training_input_is_one_line_error(tmp_path, capsys, family, preset, extra, needles):
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "bad.yaml").write_text(MALFORMED_YAML)
    (tmp_path / "list.yaml").write_text("- family\n- dit\n")
    run = tmp_path / "run"
    code = main(
        [
            "train",
            family,
            "--preset",
            fill(preset, tmp_path),
            "--max-steps",
            "1",
            "--output-dir",
            str(run),
            *[fill(a, tmp_path) for a in extra],
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    for needle in needles:
        assert fill(needle, tmp_path) in err[0], err[0]
    assert not run.exists()  # refused before anything was written
    assert (tmp_path / "a-file").read_text() == "not a folder"


def test_a_malformed_yaml_error_does_not_quote_the_file(tmp_path, capsys):
    secret = tmp_path / "secret.yaml"
    secret.write_text("password: hunter2\n[unbalanced\n")
    assert main(["train", "dit", "--preset", str(secret), "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "not valid YAML" in err and "hunter2" not in err


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder this process cannot write to: a chmod 555 folder, or for root (who ignores modes) a
    read-only system folder when the machine has one."""
    if os.name == "posix" and os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    for candidate in (Path("/proc/sys"),):
        if candidate.is_dir() and not os.access(candidate, os.W_OK):
            yield candidate
            return
    pytest.skip("running as root and no read-only folder found")


def test_a_read_only_output_folder_is_refused(read_only_folder, capsys):
    run = read_only_folder / "studio-run"
    code = main(["train", "dit", "--preset", "mnist-tiny", "--output-dir", str(run)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not writable" in err[0], err
    assert not run.exists()
