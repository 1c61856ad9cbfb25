"""Quality board: every shipped model (and runs given by path) sampled and scored the same way.

Per model, ``--n`` images at the card's sampling settings (``metrics.sampling``, with ``--sample``'s
laid over them: a run without a card, or another sampler), seeds ``--seed + i``,
class i % K for conditional models (unconditional models: no labels; ControlNet models follow the
next validation digit of each class, condition and settings from the card), drawn and judged by
`studio.metrics.judged` (as ``scripts/ship_weights.py`` and the app's run score do), plus Inception metrics:

- class accuracy and per-class accuracy by the shipped judge (the dataset's `StudioClassifier`);
- domain FD: Frechet distance in the judge's features against the dataset's standard test split
  (`evaluate`'s ``auto`` split), as the cards;
- Inception FID, KID, precision and recall against a fixed reference: the first ``n`` images of the
  validation split (the same n as the samples: FID is biased by n, so compare rows at equal n only);
- the share of failed images (`studio.metrics.failures`: noise fields, flooded or blank images,
  images the judge cannot read);
- seconds per image (sampling wall time over n, at ``--threads`` torch threads) and the CPU training
  minutes the card records.

``--models real:mnist,real:animals`` adds reference rows: n real training images of that domain, class
i % K for image i, scored exactly as samples are, so every column has its value for the data itself (the
judge's accuracy and failure share on real images; FID and precision/recall between two real sets of n).

    studio bench quality --models biggan-mnist,sagan-mnist --n 1000
    studio bench quality --models adm-mnist --n 200        # slow samplers: a smaller stated n
    studio bench quality --models runs/adm-mnist-small --sample '{"scheduler": "ddim"}' --out bench/results/quality-adm-ddim
    python bench/quality.py --readme                       # README's table from the board + cards

Writes ``<out>.json`` and ``<out>.md`` (rows of earlier runs for other models are kept, each with its
own n) and a class grid per model under ``<out>/`` (row k: class k). ``--readme`` samples nothing: it
rewrites the table between README.md's quality-board markers from ``<out>.json`` and, for shipped
models not on the board, the numbers in their own model card (marked as such, with their n).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.report import RESULTS, _cell, machine
from studio.data import DataConfig, build_dataset
from studio.data.cards import dataset_domain
from studio.data.command import class_grid
from studio.errors import StudioError
from studio.hub import SHIPPED_DIR, card_sampling, list_models, load_pipeline, pipeline_card
from studio.metrics import EvalConfig, evaluate
from studio.metrics.judged import balanced_labels, draw_samples, judge_scores, validation_controls
from studio.metrics.reference import stats_cache_dir
from studio.pipelines.base import parse_call_settings
from studio.pipelines.record import make_grid

COLUMNS = [
    "model",
    "n",
    "sampling",
    "class_accuracy",
    "min_class_accuracy",
    "worst_class",
    "domain_fd",
    "fid",
    "kid",
    "precision",
    "recall",
    "failed",
    "s_per_image",
    "train_minutes",
]
#: ``--models real:mnist`` scores that domain's real training images: the board's reference row
REAL_PREFIX = "real:"
README = ROOT / "README.md"
README_START, README_END = "<!-- quality-board:start -->", "<!-- quality-board:end -->"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="images per model (class-balanced)")
    parser.add_argument(
        "--models",
        default="",
        help="comma-separated shipped names, run names or folders, or real:DOMAIN for the real training "
        "images of mnist or animals scored the same way (default: every shipped model)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    parser.add_argument(
        "--sample",
        default="",
        metavar="JSON",
        help="pipeline call settings laid over each card's (e.g. '{\"classifier_scale\": 0}'); the row "
        "records the settings used",
    )
    parser.add_argument(
        "--out",
        default=str(RESULTS / "quality"),
        help="writes OUT.json, OUT.md and OUT/<model>.png",
    )
    parser.add_argument(
        "--readme",
        nargs="?",
        const=str(README),
        default=None,
        metavar="PATH",
        help="sample nothing: rewrite the table between PATH's quality-board markers (default "
        "README.md) from OUT.json and the shipped model cards",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="with --readme: write nothing, exit 1 if the table is out of date",
    )
    args = parser.parse_args(argv)
    if args.n < 10:
        raise StudioError(f"--n must be at least 10 (precision/recall need neighbours), got {args.n}")
    if args.threads < 1 or args.batch_size < 1:
        raise StudioError("--threads and --batch-size must be at least 1")
    args.sample = parse_call_settings(args.sample)
    return args


def shipped_models() -> list[str]:
    return [
        entry.name for entry in list_models() if entry.source == "shipped" and entry.family != "unreadable"
    ]


# ------------------------------------------------------------------------------------------ sampling
def sample(
    pipe: Any, settings: dict[str, Any], n: int, seed: int, batch_size: int, dataset: str
) -> tuple[torch.Tensor, list[int] | None, float]:
    """uint8 images (n, C, H, W), their requested classes (None: unconditional) and seconds per image."""
    controls = None
    if "control_image" in getattr(pipe, "call_parameters", ()):
        labels = balanced_labels(n, int(getattr(pipe, "num_classes", 0) or 0))
        controls = validation_controls(dataset, labels) if labels else None
    drawn = draw_samples(pipe, n, settings, seed=seed, batch_size=batch_size, controls=controls)
    return drawn.images, drawn.class_labels, drawn.seconds / n


def reference_npz(dataset: str, n: int) -> Path:
    """The first ``n`` validation images of ``dataset`` as an .npz (the fixed FID/KID/PR reference)."""
    path = stats_cache_dir() / f"quality-reference-{dataset}-val-{n}.npz"
    if not path.is_file():
        data = build_dataset(DataConfig(name=dataset), "val")
        if n > len(data):
            raise StudioError(f"--n {n} exceeds the {len(data)} validation images of {dataset}")
        pixels = data.uint8_images()[:n].permute(0, 2, 3, 1).numpy()  # (n, H, W, C), as load_npz reads
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, images=pixels, class_labels=data.labels[:n].numpy())
        tmp.replace(path)
    return path


# ------------------------------------------------------------------------------------------ scoring
def score(images: torch.Tensor, labels: list[int] | None, dataset: str, n: int) -> dict[str, Any]:
    """The board's metrics for one model's samples (see the module docstring)."""
    judged = judge_scores(images, labels, dataset, failures=True)
    config = EvalConfig(kid_subset_size=n)
    # the domain's standard held-out split, so a model trained on mnist-5k is measured as one on mnist
    inception = evaluate(images, reference_npz(dataset_domain(dataset), n), "fid,kid,pr", config=config)
    row: dict[str, Any] = {**judged.metrics(), **inception.metrics, **(judged.failures or {})}
    if judged.per_class_accuracy is not None:
        row["per_class_accuracy"] = [round(a, 4) for a in judged.per_class_accuracy]
        row["min_class_accuracy"] = judged.min_class_accuracy
        row["worst_class"] = judged.worst_class
    else:
        row["predicted_class_histogram"] = judged.predicted_class_histogram
    row["judge"] = judged.judge.get("sha256")
    return row


def grid(images: torch.Tensor, labels: list[int] | None, num_classes: int, path: Path) -> None:
    """Row k: the first ten images of class k (unconditional: the first 100 images)."""
    pixels = images.permute(0, 2, 3, 1).numpy()
    picture = (
        class_grid(pixels, np.asarray(labels), num_classes, 10)
        if labels is not None
        else make_grid(pixels[:100], columns=10)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)


def card_dataset(card: dict[str, Any]) -> str:
    """The data set a model card names (``mnist`` when it names none): the judge and reference to score with."""
    return str(card.get("dataset") or "mnist")


def real_images(domain: str, n: int) -> tuple[torch.Tensor, list[int]]:
    """``n`` training-split images of ``domain``, class ``i % K`` for image i as the samples are drawn (the
    next unused image of that class): the real data the models learned from, kept apart from the
    validation images that serve as the FID reference."""
    data = build_dataset(DataConfig(name=domain), "train")
    labels = balanced_labels(n, data.info.num_classes)
    if labels is None:
        raise StudioError(f"{REAL_PREFIX}{domain}: a reference row needs a data set with classes to judge")
    by_class = {c: iter(np.flatnonzero(data.labels.numpy() == c).tolist()) for c in set(labels)}
    try:
        indices = [next(by_class[c]) for c in labels]
    except StopIteration:
        raise StudioError(f"--n {n} needs more training images per class than {domain} has") from None
    return data.uint8_images()[indices], labels


def real_row(name: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """The board's reference row ``real:DOMAIN``: real training images scored exactly as a model's samples,
    so each column has its value for the data itself (FID and precision/recall between two real sets of
    this n; the judge's accuracy and failure share on real digits or animals)."""
    domain = name.removeprefix(REAL_PREFIX)
    images, labels = real_images(domain, args.n)
    grid(images, labels, max(labels) + 1, out / f"real-{domain}.png")
    return {
        "model": name,
        "n": args.n,
        "sampling": "training split",
        **score(images, labels, domain, args.n),
        "s_per_image": None,
        "train_minutes": None,
        "seed": None,
        "threads": args.threads,
    }


def board_row(name: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    if name.startswith(REAL_PREFIX):
        return real_row(name, args, out)
    pipe = load_pipeline(name, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    card = pipeline_card(pipe)
    card_settings, dataset = card_sampling(card), card_dataset(card)
    settings = {**card_settings, **args.sample}
    images, labels, seconds = sample(pipe, settings, args.n, args.seed, args.batch_size, dataset)
    label = Path(name).name if Path(name).exists() else name
    grid(images, labels, int(getattr(pipe, "num_classes", 0) or 0), out / f"{label}.png")
    train_seconds = card.get("train_seconds")
    return {
        "model": label,
        "n": args.n,
        "sampling": json.dumps(settings, sort_keys=True),
        **score(images, labels, dataset, args.n),
        "s_per_image": round(seconds, 4),
        "train_minutes": round(float(train_seconds) / 60, 1) if train_seconds is not None else None,
        "seed": args.seed,
        "threads": args.threads,
    }


# ------------------------------------------------------------------------------------------ output
def write_board(rows: list[dict[str, Any]], out: Path) -> None:
    """Merge ``rows`` into ``out.json`` by model (other models' rows kept) and rewrite ``out.md``."""
    json_path, md_path = out.with_suffix(".json"), out.with_suffix(".md")
    kept = json.loads(json_path.read_text())["rows"] if json_path.is_file() else []
    names = {row["model"] for row in rows}
    merged = sorted([row for row in kept if row["model"] not in names] + rows, key=lambda row: row["model"])
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(
        json.dumps({"benchmark": "quality", "machine": machine(), "rows": merged}, indent=2) + "\n"
    )
    lines = [
        "# Quality board",
        "",
        (
            "Each row: n images at the card's sampling settings (seed 0 + i, class i % 10), scored by the shipped "
            "judge of the model's domain, MNIST or animals (class accuracy, worst class, domain FD vs the "
            "domain's test split), Inception-v3 FID / KID / precision / recall vs the first n of those test images "
            "(biased by n: compare rows at equal n), share of failed images "
            "(studio/metrics/failures.py), sampling seconds per image at the stated threads, and the card's CPU "
            "training minutes. Rows `real:DOMAIN` are real training images of that domain scored the same way: "
            "the value of each column for the data itself. Reproduce: `studio bench quality --models NAME --n N`."
        ),
        "",
        f"| {' | '.join(COLUMNS)} |",
        f"|{'---|' * len(COLUMNS)}",
    ]
    for row in merged:
        lines.append("| " + " | ".join(_cell(row.get(column, "")) for column in COLUMNS) + " |")
    md_path.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------ README table
FAMILY_ORDER = {
    "dit": "DiT",
    "sagan": "SAGAN",
    "biggan": "BigGAN",
    "adm": "ADM + noisy classifier",
    "controlnet": "ControlNet (over adm-mnist)",
    "score": "score SDE",
    "dsno": "DSNO student",
}
SCHEDULER_NAMES = {"ddim": "DDIM", "ddpm": "DDPM", "pc": "PC", "ode": "ODE", "langevin": "Langevin"}
README_COLUMNS = [
    "model",
    "family",
    "training (CPU)",
    "sampling",
    "class accuracy",
    "worst class",
    "domain FD",
    "FID",
    "n",
    "measured by",
    "notes",
]


def _sampling_text(settings: dict[str, Any], family: str) -> str:
    """A card's sampling settings in words: ``DDPM 100, classifier scale 3``."""
    parts = []
    if "scheduler" in settings:
        name = str(settings["scheduler"])
        parts.append(f"{SCHEDULER_NAMES.get(name, name)} {settings.get('num_inference_steps', '')}".strip())
    for key, label in (
        ("guidance_scale", "CFG"),
        ("classifier_scale", "classifier scale"),
        ("controlnet_conditioning_scale", "control scale"),
        ("truncation", "truncation"),
    ):
        if key in settings:
            parts.append(f"{label} {settings[key]:g}")
    if "condition" in settings:
        parts.append(f"{settings['condition']} hints")
    known = {
        "scheduler",
        "num_inference_steps",
        "guidance_scale",
        "classifier_scale",
        "controlnet_conditioning_scale",
        "truncation",
        "condition",
    }
    parts += [f"{key}={value}" for key, value in sorted(settings.items()) if key not in known]
    if not parts:
        return "one network call" if family == "dsno" else "one generator call"
    return ", ".join(parts)


def _number(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _percent(value: float | None, spec: str) -> str:
    return "–" if value is None else f"{100 * value:{spec}}%"


def readme_rows(board_json: Path, weights: Path = SHIPPED_DIR) -> list[dict[str, str]]:
    """One row per shipped generator: its quality-board row when it has one, else its card's own numbers."""
    board = {}
    if board_json.is_file():
        board = {row["model"]: row for row in json.loads(board_json.read_text())["rows"]}
    rows = []
    for path in sorted(weights.glob("*/studio.json")):
        card, name = json.loads(path.read_text()), path.parent.name
        family = str(card.get("family", ""))
        if family not in FAMILY_ORDER:  # the metric judges (classifiers) are listed under the table
            continue
        metrics = card.get("metrics") or {}
        on_board = name in board
        source = board[name] if on_board else metrics
        settings = json.loads(source["sampling"]) if on_board else card_sampling(card)
        worst, names = source.get("worst_class"), card.get("class_names") or []
        notes = []
        if "edge_f1" in metrics:
            notes.append(
                f"edge F1 {metrics['edge_f1']:.3g} ({metrics['edge_f1_scale0']:.3g} without control); "
                "drawn from the edges of the validation digits the FID reference is made of, so its FID "
                "is not comparable with the other rows"
            )
        histogram = source.get("predicted_class_histogram")
        if source.get("class_accuracy") is None and histogram:
            top = int(np.argmax(histogram))
            notes.append(f"unconditional; {histogram[top] / sum(histogram):.0%} read as class {top}")
        steps, seconds = card.get("trained_steps"), card.get("train_seconds")
        rows.append(
            {
                "model": f"`{name}`",
                "family": FAMILY_ORDER[family],
                "training (CPU)": (f"{steps:,} steps, {seconds / 60:.0f} min" if steps and seconds else "–"),
                "sampling": _sampling_text(settings, family),
                "class accuracy": _percent(source.get("class_accuracy"), ".1f"),
                "worst class": (
                    "–"
                    if worst is None
                    else f"{_percent(source['min_class_accuracy'], '.0f')} "
                    f"({names[worst] if worst < len(names) else worst})"
                ),
                "domain FD": _number(source.get("domain_fd"), ".3g"),
                "FID": _number(source.get("fid"), ".1f"),
                "n": _number(source.get("n") if on_board else metrics.get("num_samples"), ","),
                "measured by": "quality board" if on_board else "its model card",
                "notes": "; ".join(notes),
                "_order": f"{list(FAMILY_ORDER).index(family)}-{name}",
            }
        )
    return sorted(rows, key=lambda row: row.pop("_order"))


def readme_judges(weights: Path = SHIPPED_DIR) -> str:
    """One line naming the shipped judges and their validation accuracy, from their cards."""
    parts = []
    for path in sorted(weights.glob("*/studio.json")):
        card = json.loads(path.read_text())
        if card.get("family") != "classifier" or card.get("val_accuracy") is None:
            continue
        split = card.get("val_split") or {}
        held_out = (
            f"{split['images']:,} validation images"
            if "images" in split
            else f"a {split.get('val_fraction', 0):.0%} validation split"
        )
        accuracy = _percent(card["val_accuracy"], ".1f")
        parts.append(f"`{path.parent.name}` ({card.get('dataset')}) {accuracy} on {held_out}")
    return "Judges (class accuracy, worst class, domain FD): " + "; ".join(parts) + "."


def readme_reference(board_json: Path) -> str:
    """One line giving the board's reference rows (real training images scored as samples), if it has any."""
    rows = json.loads(board_json.read_text())["rows"] if board_json.is_file() else []
    parts = [
        f"{row['model'].removeprefix(REAL_PREFIX)} (n = {row['n']:,}): class accuracy "
        f"{_percent(row['class_accuracy'], '.1f')}, worst class {_percent(row['min_class_accuracy'], '.0f')}, "
        f"domain FD {row['domain_fd']:.3g}, FID {row['fid']:.1f}, precision / recall "
        f"{row['precision']:.2f} / {row['recall']:.2f}, failed {_percent(row['failed'], '.1f')}"
        for row in rows
        if row["model"].startswith(REAL_PREFIX)
    ]
    if not parts:
        return ""
    return (
        "Real training images scored the same way (`studio bench quality --models real:mnist,real:animals`), "
        "the value of each column for the data itself: " + "; ".join(parts) + "."
    )


def readme_table(board_json: Path, weights: Path = SHIPPED_DIR) -> str:
    """The markdown that goes between the README's quality-board markers."""
    lines = [f"| {' | '.join(README_COLUMNS)} |", f"|{'---|' * len(README_COLUMNS)}"]
    for row in readme_rows(board_json, weights):
        lines.append("| " + " | ".join(row[column] for column in README_COLUMNS) + " |")
    reference = readme_reference(board_json)
    return "\n".join(lines + ["", *([reference, ""] if reference else []), readme_judges(weights)])


def update_readme(readme: Path, board_json: Path, check: bool = False, weights: Path = SHIPPED_DIR) -> bool:
    """Rewrite the table between the markers; returns whether it changed (``check``: report, do not write)."""
    text = readme.read_text()
    if text.count(README_START) != 1 or text.count(README_END) != 1:
        raise StudioError(f"{readme} needs exactly one {README_START} and one {README_END} line")
    head, rest = text.split(README_START)
    _, tail = rest.split(README_END)
    updated = f"{head}{README_START}\n{readme_table(board_json, weights)}\n{README_END}{tail}"
    if updated != text and not check:
        readme.write_text(updated)
    return updated != text


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.readme:
        changed = update_readme(Path(args.readme), Path(args.out).with_suffix(".json"), check=args.check)
        state = ("out of date" if args.check else "updated") if changed else "up to date"
        print(f"{args.readme}: quality table {state}")
        if changed and args.check:
            sys.exit(1)
        return
    torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()] or shipped_models()
    out = Path(args.out)
    for name in models:  # written after each model, so a long board keeps what it finished
        row = board_row(name, args, out)
        write_board([row], out)
        print(json.dumps({k: row[k] for k in COLUMNS if k in row}), flush=True)


if __name__ == "__main__":
    main()
