"""Bad input to `studio sample`, `studio eval` and `studio models`: one ``error: ...`` line, exit 2, nothing written.

Each row was a traceback, a silently wrong result (NaN guidance wrote black images, NaN truncation
was ignored but recorded) or a silent resume of a folder made with other settings. The pipelines'
own checks are also driven through the Python API, where the same values arrive without the CLI.
"""

import json
import os
import shutil
import tracemalloc
from itertools import islice
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from bench.command import bench_names
from studio.errors import StudioError
from studio.hub import load_pipeline
from studio.pipelines.batch import SETTINGS_FILE, missing_batches, sample_to_folder
from studio.pipelines.record import GenerationRecord, read_record
from studio_cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


HUGE_SEED = "1180591620717411303424"  # 2**70
FAST = {
    "dit-mnist": ["--steps", "2"],
    "adm-mnist": ["--steps", "2"],
    "score-mnist": ["--steps", "2"],
    "controlnet-mnist": ["--steps", "2", "--control-image", "{control}"],
}


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """Paths the rows refer to: a control picture, a plain file, a read-only folder."""
    root = tmp_path_factory.mktemp("places")
    control = root / "control.png"
    Image.fromarray((np.arange(28 * 28).reshape(28, 28) % 255).astype(np.uint8)).save(control)
    (root / "file.txt").write_text("not a folder")
    read_only = root / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.access(read_only, os.W_OK):  # root ignores permission bits; /proc/self is read-only for everyone
        read_only = Path("/proc/self")
    yield {"control": str(control), "file": str(root / "file.txt"), "read_only": str(read_only)}
    (root / "read-only").chmod(0o755)


def fill(items, places, out):
    return [
        str(i)
        .replace("{control}", places["control"])
        .replace("{file}", places["file"])
        .replace("{read_only}", places["read_only"])
        .replace("{out}", str(out))
        for i in items
    ]


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, needles):
    assert code == 2, err
    lines = [
        line for line in err.splitlines() if line.strip() and not line.startswith(("Loading", "sampling"))
    ]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


# ------------------------------------------------------------------------------------------ sample
SAMPLE_ROWS = [
    # non-finite settings: refused by the pipelines (they wrote black or noise images, or ignored the value)
    ("dit-mnist", ["--guidance-scale", "nan"], ["guidance_scale must be a finite number, got nan"]),
    ("dit-mnist", ["--guidance-scale", "inf"], ["guidance_scale must be a finite number, got inf"]),
    ("dit-mnist", ["--guidance-scale=-inf"], ["guidance_scale must be a finite number"]),
    ("dit-mnist", ["--eta", "nan", "--scheduler", "ddim"], ["eta must be a finite number"]),
    ("dit-mnist", ["--eta", "inf", "--scheduler", "ddim"], ["eta must be a finite number"]),
    ("adm-mnist", ["--guidance-scale", "nan"], ["guidance_scale must be a finite number"]),
    ("adm-mnist", ["--guidance-scale", "inf"], ["guidance_scale must be a finite number"]),
    ("adm-mnist", ["--guidance-scale=-inf"], ["guidance_scale must be a finite number"]),
    ("adm-mnist", ["--eta", "nan", "--scheduler", "ddim"], ["eta must be a finite number"]),
    ("adm-mnist", ["--eta", "inf", "--scheduler", "ddim"], ["eta must be a finite number"]),
    ("adm-mnist", ["--classifier-scale", "nan"], ["classifier_scale must be a finite number"]),
    ("adm-mnist", ["--classifier-scale", "inf"], ["classifier_scale must be a finite number"]),
    ("controlnet-mnist", ["--guidance-scale", "nan"], ["guidance_scale must be a finite number"]),
    ("controlnet-mnist", ["--guidance-scale", "inf"], ["guidance_scale must be a finite number"]),
    ("controlnet-mnist", ["--guidance-scale=-inf"], ["guidance_scale must be a finite number"]),
    ("controlnet-mnist", ["--eta", "nan"], ["eta must be a finite number"]),
    ("controlnet-mnist", ["--eta", "inf"], ["eta must be a finite number"]),
    (
        "controlnet-mnist",
        ["--control-scale", "nan"],
        ["controlnet_conditioning_scale must be a finite number"],
    ),
    (
        "controlnet-mnist",
        ["--control-scale", "inf"],
        ["controlnet_conditioning_scale must be a finite number"],
    ),
    ("controlnet-mnist", ["--control-scale=-inf"], ["controlnet_conditioning_scale must be a finite number"]),
    ("biggan-mnist", ["--truncation", "nan"], ["truncation must be a finite number, got nan"]),
    ("biggan-mnist", ["--truncation", "inf"], ["truncation must be a finite number, got inf"]),
    ("sagan-mnist", ["--truncation", "nan"], ["truncation must be a finite number"]),
    ("sagan-mnist", ["--truncation", "inf"], ["truncation must be a finite number"]),
    # a tiny positive truncation drew latents by rejection for minutes (about 1.25 / threshold draws each)
    (
        "biggan-mnist",
        ["--truncation", "1e-6"],
        ["truncation threshold 1e-06 is too small", "use 0 for z = 0"],
    ),
    ("sagan-mnist", ["--truncation", "0.001"], ["truncation threshold 0.001 is too small"]),
    # seeds outside the generator's 0..2^64-1 (overflowed with a traceback; -1 aliased 2^64-1)
    *[
        (model, ["--seed", HUGE_SEED], [f"seed must lie in 0..{2**64 - 1}", HUGE_SEED])
        for model in (
            "dit-mnist",
            "adm-mnist",
            "controlnet-mnist",
            "score-mnist",
            "dsno-mnist",
            "biggan-mnist",
            "sagan-mnist",
        )
    ],
    ("dit-mnist", ["--seed", str(2**64 - 1)], ["seed + num_images - 1"]),
    ("dit-mnist", ["--seed", "-1"], ["seed must lie in 0..", "got -1"]),
    ("score-mnist", ["--seed", "-5"], ["seed must lie in 0..", "got -5"]),
    # more steps than trained timesteps, and step counts a scheduler cannot run
    ("dit-mnist", ["--steps", "5000"], ["num_inference_steps must be in 1..1000", "got 5000"]),
    ("dit-mnist", ["--steps", "5000", "--scheduler", "ddim"], ["num_inference_steps must be in 1..1000"]),
    ("dit-mnist", ["--steps", "1001", "--scheduler", "euler"], ["num_inference_steps must be in 1..1000"]),
    (
        "dit-mnist",
        ["--steps", "3", "--scheduler", "pndm"],
        ["pndm scheduler needs at least 4 steps", "got 3"],
    ),
    (
        "adm-mnist",
        ["--steps", "2", "--scheduler", "pndm", "--classifier-scale", "0"],
        ["pndm scheduler needs at least 4 steps"],
    ),
    # the card's classifier guidance (scale 3) with a solver that cannot take it
    (
        "adm-mnist",
        ["--steps", "2", "--scheduler", "dpm++"],
        ["'ddpm' or 'ddim'", "set classifier_scale to 0"],
    ),
    ("controlnet-mnist", ["--steps", "1", "--scheduler", "pndm"], ["pndm scheduler needs at least 4 steps"]),
    # output folders that cannot be one
    ("dit-mnist", ["--out", "{file}"], ["is a file, not a folder"]),
    ("score-mnist", ["--out", "{file}"], ["is a file, not a folder"]),
    ("biggan-mnist", ["--out", "{file}"], ["is a file, not a folder"]),
    ("dit-mnist", ["--out", "{file}/samples"], ["cannot create the output folder"]),
    (
        "dit-mnist",
        ["--out", "/proc/studio-samples"],
        ["cannot create the output folder /proc/studio-samples"],
    ),
    ("dit-mnist", ["--out", "{read_only}"], ["is not writable"]),
    ("dsno-mnist", ["--out", "{read_only}"], ["is not writable"]),
    # a negative DDIM eta (the ADM pipelines refused it, DiT drew with it), xformers without CUDA (said "using SDPA")
    ("dit-mnist", ["--eta", "-1", "--scheduler", "ddim"], ["eta must be >= 0, got -1.0"]),
    *[(model, ["--attention", "xformers"], ["use --attention sdpa"]) for model in ("dit-mnist", "adm-mnist")],
    # eta with a sampler that ignores it (recorded, no effect)
    (
        "dit-mnist",
        ["--eta", "0.5", "--scheduler", "ddpm"],
        ["eta=0.5 has no effect with the DDPMScheduler sampler"],
    ),
    ("dit-mnist", ["--eta", "0.5", "--scheduler", "dpm++"], ["eta=0.5 has no effect"]),
    ("adm-mnist", ["--eta", "0.3", "--scheduler", "ddpm"], ["eta=0.3 has no effect with the ddpm sampler"]),
    (
        "adm-mnist",
        ["--eta", "0.3", "--scheduler", "euler", "--classifier-scale", "0"],
        ["eta=0.3 has no effect"],
    ),
    (
        "controlnet-mnist",
        ["--eta", "0.3", "--scheduler", "ddpm"],
        ["eta=0.3 has no effect with the ddpm sampler"],
    ),
    # counts, named by their flag and refused before the model loads
    ("dit-mnist", ["--num-images", "0"], ["--num-images must be at least 1, got 0"]),
    ("dit-mnist", ["--num-images", "-3"], ["--num-images must be at least 1, got -3"]),
    ("dit-mnist", ["--batch-size", "0"], ["--batch-size must be at least 1, got 0"]),
    ("dit-mnist", ["--batch-size", "-2"], ["--batch-size must be at least 1, got -2"]),
]


@pytest.mark.parametrize(
    "model,flags,needles", SAMPLE_ROWS, ids=[f"{m}:{' '.join(f)}" for m, f, _ in SAMPLE_ROWS]
)
def test_bad_sample_requests_give_one_line_errors_and_no_images(
    model, flags, needles, places, tmp_path, capsys
):
    out = tmp_path / "samples"
    argv = ["sample", model, "--num-images", "2", "--out", str(out), *FAST.get(model, []), *flags]
    code, _, err = run(fill(argv, places, out), capsys)
    assert_one_line_error(code, err, needles)
    assert not out.is_dir() or not list(out.glob("*.png"))


KEPT_ROWS = [  # refused cleanly before these fixes too; kept here so the whole table stays in one place
    ("dit-mnist", ["--class-labels", "10"], ["class label 10 is out of range", "0..9"]),
    ("sagan-mnist", ["--class-labels", "-1"], ["class label -1 is out of range"]),
    ("dsno-mnist", ["--class-labels", "10"], ["class label 10 is out of range"]),
    ("score-mnist", ["--class-labels", "3"], ["unconditional: it takes no class labels"]),
    ("dit-mnist", ["--class-labels", "three"], ["class labels must be integers"]),
    ("dit-mnist", ["--scheduler", "nope"], ["unknown scheduler 'nope'"]),
    ("adm-mnist", ["--scheduler", "nope"], ["unknown scheduler 'nope'"]),
    ("score-mnist", ["--scheduler", "euler"], ["unknown sampler 'euler' for a score model"]),
    ("biggan-mnist", ["--scheduler", "ddim"], ["--scheduler does not apply to biggan models"]),
    ("dsno-mnist", ["--steps", "4"], ["--steps does not apply to dsno models"]),
    ("controlnet-mnist", ["--condition", "bogus"], ["unknown condition type 'bogus'"]),
]


@pytest.mark.parametrize(
    "model,flags,needles", KEPT_ROWS, ids=[f"{m}:{' '.join(f)}" for m, f, _ in KEPT_ROWS]
)
def test_bad_requests_refused_before_stay_refused(model, flags, needles, places, tmp_path, capsys):
    test_bad_sample_requests_give_one_line_errors_and_no_images(
        model, flags, needles, places, tmp_path, capsys
    )


# ------------------------------------------------------------------------------------------ resume
@pytest.fixture(scope="module")
def made(tmp_path_factory, places):
    """Folders sampled once per model (2 images), copied by each row before it tries to resume them."""
    folders = {}
    base = {"dit-mnist": [], "biggan-mnist": [], "controlnet-mnist": [], "score-mnist": []}
    for model, extra in base.items():
        out = tmp_path_factory.mktemp("made") / model
        assert (
            main(
                fill(
                    ["sample", model, "--num-images", "2", "--out", out, *FAST.get(model, []), *extra],
                    places,
                    out,
                )
            )
            == 0
        )
        folders[model] = out
    return folders


RESUME_ROWS = [  # (folder made by, model asked, flags, the field the error names)
    ("dit-mnist", "adm-mnist", [], "family='dit'"),
    ("dit-mnist", "dit-mnist", ["--steps", "3"], "num_inference_steps=2"),
    ("dit-mnist", "dit-mnist", ["--guidance-scale", "3"], "guidance_scale=2.0"),  # the card's
    ("dit-mnist", "dit-mnist", ["--scheduler", "euler"], "scheduler='ddim'"),
    ("dit-mnist", "dit-mnist", ["--eta", "0.5", "--scheduler", "ddim"], "eta=0.0"),
    ("dit-mnist", "dit-mnist", ["--seed", "1"], "seed=0"),
    ("dit-mnist", "dit-mnist", ["--class-labels", "3"], "class_labels=None"),
    ("dit-mnist", "dit-mnist", ["--plugin", "fora:interval=2"], "plugins={}"),
    ("biggan-mnist", "biggan-mnist", ["--truncation", "0.5"], "truncation=None"),
    ("biggan-mnist", "sagan-mnist", [], "family='biggan'"),
    ("controlnet-mnist", "controlnet-mnist", ["--control-scale", "0.5"], "controlnet_conditioning_scale=1.0"),
    ("controlnet-mnist", "controlnet-mnist", ["--condition", "sobel"], "condition='canny'"),
    ("controlnet-mnist", "controlnet-mnist", ["--control-image", "{out}/000000.png"], "control_image="),
    ("score-mnist", "score-mnist", ["--steps", "3"], "num_inference_steps=2"),
    ("score-mnist", "score-mnist", ["--scheduler", "ode"], "scheduler='ddpm'"),
]


@pytest.mark.parametrize(
    "made_by,model,flags,needle", RESUME_ROWS, ids=[f"{a}->{b}:{' '.join(f)}" for a, b, f, _ in RESUME_ROWS]
)
def test_resuming_a_folder_made_with_other_settings_is_refused(
    made, made_by, model, flags, needle, places, tmp_path, capsys
):
    out = tmp_path / "samples"
    shutil.copytree(made[made_by], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    argv = [
        "sample",
        model,
        "--num-images",
        "4",
        "--out",
        str(out),
        *FAST.get(model, []),
        *flags,
    ]  # last flag wins
    code, _, err = run(fill(argv, places, made[made_by]), capsys)
    assert_one_line_error(code, err, [f"{out} holds images made with", needle])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_images_without_settings_or_with_another_record_are_refused(made, tmp_path, capsys):
    out = tmp_path / "samples"
    shutil.copytree(made["dit-mnist"], out)
    argv = ["sample", "dit-mnist", "--num-images", "2", "--steps", "2", "--out", str(out)]
    assert run(argv, capsys)[0] == 0  # the same request: resumes, nothing to draw
    (out / "000001.png").write_bytes((made["dit-mnist"] / "000000.png").read_bytes())  # image 0 posing as 1
    assert_one_line_error(*run(argv, capsys)[::2], ["000001.png was drawn with seeds=[0]", "asks for [1]"])
    (out / SETTINGS_FILE).unlink()
    assert_one_line_error(*run(argv, capsys)[::2], [f"holds 2 image files but no {SETTINGS_FILE}"])


def test_a_folder_in_an_images_place_is_named(tmp_path, capsys):
    out = tmp_path / "samples"
    argv = ["sample", "dit-mnist", "--num-images", "1", "--steps", "2", "--out", str(out)]
    assert run(argv, capsys)[0] == 0
    (out / "000001.png").mkdir()
    code, _, err = run([*argv[:2], "--num-images", "2", *argv[4:]], capsys)
    assert_one_line_error(code, err, [f"cannot write {out / '000001.png'}"])


def test_a_failed_request_does_not_lock_an_empty_folder(tmp_path, capsys):
    out = tmp_path / "samples"
    bad = [
        "sample",
        "adm-mnist",
        "--num-images",
        "1",
        "--steps",
        "2",
        "--out",
        str(out),
        "--eta",
        "-1",
        "--scheduler",
        "ddim",
    ]
    assert_one_line_error(*run(bad, capsys)[::2], ["eta must be >= 0"])
    good = bad[:-4] + ["--eta", "0", "--scheduler", "ddim"]
    assert run(good, capsys)[0] == 0 and (out / "000000.png").is_file()


def test_a_truncated_image_is_drawn_again(made, tmp_path, capsys):
    out = tmp_path / "samples"
    shutil.copytree(made["dit-mnist"], out)
    with Image.open(out / "000001.png") as image:
        original = np.asarray(image).astype(int)
    data = (out / "000001.png").read_bytes()
    (out / "000001.png").write_bytes(data[: len(data) // 2])
    code, stdout, err = run(
        ["sample", "dit-mnist", "--num-images", "2", "--steps", "2", "--out", str(out)], capsys
    )
    assert code == 0, err
    assert "(1 already there, 1 unreadable ones drawn again)" in stdout
    with Image.open(out / "000001.png") as image:
        redrawn = np.asarray(image).astype(int)
    assert np.abs(redrawn - original).max() <= 1  # the same seed and class; float rounding may move one level
    assert read_record(str(out / "000001.png")).seeds == [1]
    assert np.load(out / "samples.npz")["images"].shape[0] == 2


# ------------------------------------------------------------------------------------------ API
@pytest.fixture(scope="module")
def score_pipe():
    pipe = load_pipeline("score-mnist")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"snr": float("nan")}, "snr must be a finite number, got nan"),
        ({"snr": float("inf")}, "snr must be a finite number, got inf"),
        ({"step_lr": float("nan"), "scheduler": "pc"}, "step_lr must be a finite number, got nan"),
        ({"step_lr": float("inf"), "scheduler": "pc"}, "step_lr must be a finite number, got inf"),
        ({"seed": [0, 2**64]}, f"seed must lie in 0..{2**64 - 1}"),
        ({"seed": "7"}, "seed must be an integer or one integer per image"),
    ],
)
def test_score_pipeline_refuses_non_finite_settings(score_pipe, kwargs, message):
    with pytest.raises(StudioError, match=message.replace("+", r"\+")):
        score_pipe(num_images=2, num_inference_steps=1, **kwargs)


def test_sample_to_folder_refuses_arguments_the_pipeline_does_not_take(score_pipe, tmp_path):
    with pytest.raises(StudioError, match="score models take no guidance_scale"):
        sample_to_folder(score_pipe, tmp_path / "o", 1, guidance_scale=2.0)
    with pytest.raises(StudioError, match="unconditional: it takes no class labels"):
        sample_to_folder(score_pipe, tmp_path / "o", 1, class_labels=3)


# ------------------------------------------------------------------------------------------ streaming
def test_planning_a_billion_images_allocates_nothing_per_image():
    tracemalloc.start()
    try:
        batches = list(islice(missing_batches(10**9, {1, 5}, 16, process_index=1, num_processes=2), 3))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert batches[0] == list(range(18, 34)) and len(batches) == 3  # batch 0 (0, 2-4, 6-17) went to process 0
    assert peak < 100_000


@pytest.mark.parametrize("num_processes", [1, 2, 3])
def test_process_shares_are_disjoint_cover_the_missing_images_and_match_the_bar_totals(num_processes):
    from studio.pipelines.batch import _share

    present = {0, 3, 4, 9}
    shares = [
        [i for batch in missing_batches(23, present, 4, p, num_processes) for i in batch]
        for p in range(num_processes)
    ]
    assert sorted(i for share in shares for i in share) == [i for i in range(23) if i not in present]
    assert [len(share) for share in shares] == [_share(19, 4, p, num_processes) for p in range(num_processes)]


class Stop(Exception):
    pass


class CountingPipe:
    """A stand-in pipeline that stops the run after two batches (a billion images are never drawn)."""

    family, num_classes, plugins, components = "fake", 10, [], {}
    call_parameters = ("num_images", "class_labels", "seed", "output_type")

    def model_name(self):
        return "fake"

    def set_progress_bar_config(self, **kwargs):
        pass

    def __init__(self, stop_at=2):
        self.calls, self.stop_at = [], stop_at

    def __call__(self, num_images, class_labels, seed, output_type="np"):
        self.calls.append((list(seed), list(class_labels)))
        if len(self.calls) == self.stop_at:
            raise Stop
        record = GenerationRecord(
            model="fake", family="fake", seeds=list(seed), class_labels=list(class_labels)
        )
        return SimpleNamespace(images=np.zeros((num_images, 4, 4, 1), dtype=np.float32), record=record)


def test_sampling_a_billion_images_streams_seeds_and_labels(tmp_path):
    pipe = CountingPipe()
    tracemalloc.start()
    try:
        with pytest.raises(Stop):
            sample_to_folder(pipe, tmp_path / "o", 10**9, batch_size=4, seed=10, class_labels=[3, 4, 5])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert pipe.calls[1] == ([14, 15, 16, 17], [4, 5, 3, 4])  # image i: seed 10 + i, class labels[i % 3]
    assert peak < 2_000_000  # a list of 10^9 labels alone is 8 GB
    assert json.loads((tmp_path / "o" / SETTINGS_FILE).read_text())["class_labels"] == [3, 4, 5]


def test_seeds_beyond_int64_are_stored_unsigned(tmp_path):
    pipe = CountingPipe(stop_at=0)
    sample_to_folder(pipe, tmp_path / "o", 3, batch_size=2, seed=2**64 - 3)
    seeds = np.load(tmp_path / "o" / "samples.npz")["seeds"]
    assert seeds.dtype == np.uint64 and seeds.tolist() == [2**64 - 3, 2**64 - 2, 2**64 - 1]
    with pytest.raises(StudioError, match="seed \\+ num_images - 1"):
        sample_to_folder(pipe, tmp_path / "o", 4, seed=2**64 - 3)


# ------------------------------------------------------------------------------------------ eval
EVAL_ROWS = [
    (["--out", "{out}"], ["is a folder"]),
    (["--out", "{file}/results.json"], ["cannot create the folder of --out"]),
    (["--out", "{read_only}/results.json"], ["is not writable"]),
    (["--num-samples", "-1"], ["--num-samples must be at least 0, got -1"]),
    (["--batch-size", "0"], ["--batch-size must be at least 1, got 0"]),
    (["--mem-ratio", "nan", "--metrics", "mem"], ["--mem-ratio must be a finite number > 0, got nan"]),
    (["--mem-ratio", "inf", "--metrics", "mem"], ["--mem-ratio must be a finite number > 0, got inf"]),
    (["--mem-ratio", "0", "--metrics", "mem"], ["--mem-ratio must be a finite number > 0, got 0"]),
    (["--seed", "-1", "--metrics", "kid"], ["--seed must be at least 0, got -1"]),
    (["--feature-size", "0"], ["--feature-size must be at least 1, got 0"]),
    (["--kid-subset-size", "1", "--metrics", "kid"], ["--kid-subset-size must be at least 2, got 1"]),
]


@pytest.mark.parametrize("flags,needles", EVAL_ROWS, ids=[" ".join(f) for f, _ in EVAL_ROWS])
def test_bad_eval_requests_give_one_line_errors(flags, needles, made, places, tmp_path, capsys):
    argv = [
        "eval",
        str(made["dit-mnist"]),
        "--reference",
        "mnist-5k",
        "--reference-split",
        "val",
        "--metrics",
        "acc",
        "--cache-dir",
        "none",
        *flags,
    ]
    code, _, err = run(fill(argv, places, tmp_path), capsys)
    assert_one_line_error(code, err, needles)


# ------------------------------------------------------------------------------------------ models
@pytest.mark.parametrize("broken", ["model_index.json", "studio.json"])
def test_a_broken_run_is_listed_as_unreadable_and_breaks_no_other_lookup(broken, runs_dir, tmp_path, capsys):
    folder = runs_dir / "crashed" / "pipeline"
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "StudioDiTPipeline"}')
    (folder / broken).write_text("{half written")
    code, stdout, _ = run(["models"], capsys)
    assert code == 0 and any(line.split()[:2] == ["crashed", "unreadable"] for line in stdout.splitlines())
    code, stdout, err = run(
        ["sample", "dit-mnist", "--num-images", "1", "--steps", "1", "--out", str(tmp_path / "o")], capsys
    )
    assert code == 0, err


# ------------------------------------------------------------------------------------------ bench
@pytest.mark.parametrize("name", bench_names())
def test_every_benchmark_prints_its_help_through_studio_bench(name, capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse of bench/NAME.py itself
        main(["bench", name, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_a_sampler_that_diverges_to_nan_is_an_error_that_names_it_not_blank_images():
    """A NaN or infinite output would come out as a blank picture; the pipeline says the sampling diverged."""
    from tests.builders import tiny_dit_pipeline

    pipe = tiny_dit_pipeline()
    pipe.set_progress_bar_config(disable=True)
    kwargs = {"class_labels": [1, 2], "num_inference_steps": 2, "scheduler": "ddim", "seed": 0}
    assert np.isfinite(pipe(output_type="np", **kwargs).images).all()

    def diverge(pipe, step, timestep, tensors):
        return {"latents": tensors["latents"] * float("inf")}  # what a sampler blowing up leaves behind

    with pytest.raises(StudioError, match=r"2 of 2 images came out NaN or infinite with the ddim sampler"):
        pipe(output_type="np", callback_on_step_end=diverge, **kwargs)
