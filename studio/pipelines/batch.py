"""Batch sampling to a folder: sharded over accelerate processes, resumable, self-describing.

Image i is written as ``{i:06d}.png`` with its generation record, drawn with seed ``seed + i``
and class ``label(i)``, so the folder is the same whether it was made by one process or many, in
one go or over several resumed runs. Seeds and labels are computed per batch, never listed up
front: planning a billion images costs no memory. Finally the main process writes
``samples.npz`` (uint8 images + labels + seeds, for evaluators), ``grid.png`` and
``manifest.jsonl`` (one record per image), streaming them image by image.

A folder remembers what made it in ``sampling.json`` (model, weights, every call setting with the
pipeline's defaults filled in, plugins, base seed, class labels). A later run resumes it only when
all of these match (the number of images may grow or shrink); otherwise it is refused, naming the
first setting that differs. The images already there are checked against their own records, and
an unreadable one (a truncated file) is drawn again.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from accelerate import PartialState
from PIL import Image
from tqdm.auto import tqdm

from studio.errors import StudioError
from studio.pipelines.base import check_count, check_seed_range, label_source
from studio.pipelines.record import GenerationRecord, make_grid, png_info, read_record, save_png

GRID_MAX_IMAGES = 64
SETTINGS_FILE = "sampling.json"
#: call arguments that vary per batch or only shape the output: not settings of a folder
PER_CALL_ARGUMENTS = (
    "num_images",
    "class_labels",
    "seed",
    "output_type",
    "callback_on_step_end",
    "return_dict",
)


@dataclass
class SampleRun:
    """What a batch-sampling call did."""

    out_dir: Path
    num_images: int
    generated: int  # by this process in this call
    skipped: int  # already present from an earlier run
    redrawn: int = 0  # unreadable images found in the folder (truncated files) and drawn again


def image_path(out_dir: Path, index: int) -> Path:
    return out_dir / f"{index:06d}.png"


def image_index(name: str) -> int | None:
    """The index of an image file name written by `image_path` (``000012.png`` -> 12), else None."""
    stem, _, suffix = name.rpartition(".")
    if suffix != "png" or not stem.isdigit() or f"{int(stem):06d}" != stem:
        return None
    return int(stem)


# ------------------------------------------------------------------------------------------ settings
def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON data; pictures and arrays (a ControlNet's control image) by content hash."""
    if isinstance(value, PIL.Image.Image):
        value = np.asarray(value)
    if torch.is_tensor(value):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        digest = hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()[:16]
        return f"array{list(value.shape)}:{value.dtype}:sha256:{digest}"
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def weights_fingerprint(pipe: Any) -> str:
    """A short sha256 of every network's weights and of the scheduler config: retrained = another model."""
    digest = hashlib.sha256()
    for name, component in sorted(pipe.components.items()):
        if isinstance(component, torch.nn.Module):
            for key, tensor in component.state_dict().items():
                digest.update(f"{name}.{key}".encode())
                digest.update(
                    tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                )
        elif hasattr(component, "config"):
            digest.update(json.dumps(dict(component.config), sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def call_settings(pipe: Any, call_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every setting of the pipeline call: the given ones, and the signature's defaults for the rest.

    Refuses arguments the pipeline does not take (its ``call_parameters``), so no setting is
    silently dropped or passed to a pipeline that would fail on it.
    """
    accepted = getattr(pipe, "call_parameters", None)
    if accepted is None:
        raise StudioError(
            f"{type(pipe).__name__} is not a studio pipeline (it lists no call_parameters); "
            "batch sampling needs one"
        )
    unknown = sorted(set(call_kwargs) - set(accepted) | set(call_kwargs) & set(PER_CALL_ARGUMENTS))
    if unknown:
        family = getattr(pipe, "family", "") or type(pipe).__name__
        raise StudioError(
            f"{family} models take no {', '.join(unknown)} here (settings: "
            f"{', '.join(n for n in accepted if n not in PER_CALL_ARGUMENTS)})"
        )
    signature = inspect.signature(pipe.__call__).parameters
    settings = {}
    for name in accepted:
        if name in PER_CALL_ARGUMENTS:
            continue
        default = signature[name].default if name in signature else None
        settings[name] = call_kwargs.get(name, None if default is inspect.Parameter.empty else default)
    return _jsonable(settings)


def folder_request(
    pipe: Any, seed: int, class_labels: int | Sequence[int] | None, call_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """What a sample folder's images depend on, apart from how many there are (``sampling.json``)."""
    return json.loads(
        json.dumps(
            {
                "model": pipe.model_name(),
                "family": getattr(pipe, "family", ""),
                "weights": weights_fingerprint(pipe),
                "seed": seed,
                "class_labels": _jsonable(class_labels),
                "settings": call_settings(pipe, call_kwargs),
                "plugins": {plugin.name: plugin.settings() for plugin in getattr(pipe, "plugins", [])},
            },
            sort_keys=True,
            default=str,
        )
    )


def _first_difference(stored: dict[str, Any], request: dict[str, Any]) -> tuple[str, Any, Any] | None:
    for key in sorted(set(stored) | set(request)):
        old, new = stored.get(key), request.get(key)
        if isinstance(old, dict) and isinstance(new, dict) and key == "settings":
            inner = _first_difference(old, new)
            if inner is not None:
                return inner
        elif old != new:
            return key, old, new
    return None


# ------------------------------------------------------------------------------------------ folder
def prepare_folder(out_dir: Path, is_main: bool) -> None:
    """Create ``out_dir`` (main process) and make sure it is a writable folder."""
    if out_dir.exists() and not out_dir.is_dir():
        raise StudioError(f"--out {out_dir} is a file, not a folder")
    if is_main:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StudioError(f"cannot create the output folder {out_dir}: {exc.strerror or exc}") from None
    if out_dir.is_dir() and not os.access(out_dir, os.W_OK | os.X_OK):
        raise StudioError(f"the output folder {out_dir} is not writable")


def check_folder(
    out_dir: Path, num_images: int, request: dict[str, Any], label_of: Callable[[int], int] | None
) -> tuple[set[int], int]:
    """Images 0..num_images-1 already in ``out_dir`` that belong to this request, and how many are unreadable.

    Refuses a folder made with other settings (naming the first difference), image files without
    ``sampling.json``, and images whose own record contradicts the request (another model, seed,
    class, step count, guidance or plugins). Unreadable images are left out, to be drawn again.
    """
    if not out_dir.is_dir():
        return set(), 0
    found = {}
    with os.scandir(out_dir) as entries:
        for entry in entries:
            index = image_index(entry.name)
            if index is not None:
                found[index] = Path(entry.path)
    settings_path = out_dir / SETTINGS_FILE
    if not found:  # nothing to resume: whatever settings an earlier (failed) run asked for do not matter
        return set(), 0
    if settings_path.is_file():
        try:
            stored = json.loads(settings_path.read_text())
        except (OSError, ValueError) as exc:
            raise StudioError(
                f"cannot read {settings_path}: {exc}; remove it or sample into another folder"
            ) from None
        difference = _first_difference(stored, request)
        if difference is not None:
            key, old, new = difference
            raise StudioError(
                f"{out_dir} holds images made with {key}={old!r}, this run asks for {key}={new!r}; "
                "resume with the same settings or sample into another --out"
            )
    else:
        raise StudioError(
            f"{out_dir} holds {len(found)} image files but no {SETTINGS_FILE} (not made by "
            "`studio sample`, or by an older version); sample into another --out"
        )
    present, unreadable = set(), 0
    for index, path in found.items():
        if index >= num_images:
            continue
        try:
            with Image.open(path) as image:
                image.load()
            record = read_record(str(path))
        except (OSError, ValueError, SyntaxError):
            unreadable += 1
            continue
        _check_image_record(path, record, index, request, label_of)
        present.add(index)
    return present, unreadable


def _check_image_record(
    path: Path,
    record: GenerationRecord,
    index: int,
    request: dict[str, Any],
    label_of: Callable[[int], int] | None,
) -> None:
    settings = request["settings"]
    expected = {
        "model": request["model"],
        "family": request["family"],
        "seeds": [request["seed"] + index],
        "class_labels": None if label_of is None else [label_of(index)],
        "plugins": request["plugins"],
    }
    if settings.get("num_inference_steps") is not None and record.steps is not None:
        expected["steps"] = settings["num_inference_steps"]
    if settings.get("guidance_scale") is not None and record.guidance_scale is not None:
        expected["guidance_scale"] = settings["guidance_scale"]
    got = json.loads(json.dumps(record.to_dict(), default=str))
    for key, value in expected.items():
        if got.get(key) != value:
            raise StudioError(
                f"{path} was drawn with {key}={got.get(key)!r}, this run asks for {value!r}; "
                "remove it or sample into another --out"
            )


def missing_batches(
    num_images: int, present: Container[int], batch_size: int, process_index: int = 0, num_processes: int = 1
) -> Iterator[list[int]]:
    """This process's batches of the indices not in ``present``, lazily (batch k goes to process k mod P).

    Every process walks the same sequence of missing indices, so the shares are disjoint and
    together cover every missing image.
    """
    batch: list[int] = []
    number = 0
    for index in range(num_images):
        if index in present:
            continue
        batch.append(index)
        if len(batch) == batch_size:
            if number % num_processes == process_index:
                yield batch
            batch, number = [], number + 1
    if batch and number % num_processes == process_index:
        yield batch


def _share(missing: int, batch_size: int, process_index: int, num_processes: int) -> int:
    """How many of ``missing`` images `missing_batches` gives this process."""
    batches = -(-missing // batch_size)
    mine = len(range(process_index, batches, num_processes))
    short = batches * batch_size - missing  # the last batch is this much smaller
    return mine * batch_size - (short if batches and (batches - 1) % num_processes == process_index else 0)


# ------------------------------------------------------------------------------------------ sampling
def sample_to_folder(
    pipe: Any,
    out_dir: str | Path,
    num_images: int,
    batch_size: int = 16,
    seed: int = 0,
    class_labels: int | Sequence[int] | None = None,
    **call_kwargs: Any,
) -> SampleRun:
    """Generate ``num_images`` images into ``out_dir``, keeping those an earlier run with the same settings made.

    ``call_kwargs`` go to every pipeline call (steps, guidance, scheduler, truncation...); only
    arguments the pipeline lists in ``call_parameters`` are accepted. Under ``accelerate launch``
    each process takes a disjoint share of the missing images.
    """
    num_images = check_count("num_images", num_images)
    batch_size = check_count("batch_size", batch_size)
    seed = check_seed_range(seed, num_images)
    out_dir = Path(out_dir)
    takes_labels = "class_labels" in getattr(pipe, "call_parameters", ())
    label_of = label_source(class_labels, int(getattr(pipe, "num_classes", 0)) if takes_labels else 0)
    request = folder_request(pipe, seed, class_labels, call_kwargs)
    state = PartialState()
    prepare_folder(out_dir, state.is_main_process)
    state.wait_for_everyone()
    present, unreadable = check_folder(out_dir, num_images, request, label_of)
    if state.is_main_process:
        _write_json(out_dir / SETTINGS_FILE, request)
    state.wait_for_everyone()  # every process has listed the folder before anyone writes an image

    missing = num_images - len(present)
    share = _share(missing, batch_size, state.process_index, state.num_processes)
    generated = 0
    pipe.set_progress_bar_config(disable=True)
    bar = tqdm(total=share, desc=f"sampling (process {state.process_index})", disable=not share)
    try:  # the bar ends its line even when a call fails, so an error message starts on its own
        for batch in missing_batches(
            num_images, present, batch_size, state.process_index, state.num_processes
        ):
            labels = [label_of(i) for i in batch] if label_of is not None else None
            out = pipe(
                num_images=len(batch),
                seed=[seed + i for i in batch],
                output_type="np",
                **({"class_labels": labels} if takes_labels else {}),
                **call_kwargs,
            )
            for j, index in enumerate(batch):
                _save(out.images[j], image_path(out_dir, index), out.record.for_image(j))
            generated += len(batch)
            bar.update(len(batch))
    finally:
        bar.close()
    state.wait_for_everyone()
    if state.is_main_process:
        try:
            write_summaries(out_dir, num_images)
        except OSError as exc:
            raise StudioError(
                f"cannot write samples.npz, grid.png and manifest.jsonl in {out_dir}: {exc.strerror or exc}"
            ) from None
    state.wait_for_everyone()
    return SampleRun(out_dir, num_images, generated, len(present), unreadable)


# ------------------------------------------------------------------------------------------ summaries
def write_summaries(out_dir: Path, num_images: int) -> None:
    """``samples.npz``, ``grid.png`` and ``manifest.jsonl`` from the PNGs 0..num_images-1.

    Streamed one image at a time (the npz entries are written piecewise, labels and seeds go
    through memory-mapped scratch files), so memory does not grow with the number of images.
    """
    first, first_record = _read(out_dir, 0)
    last_seed = first_record.seeds[0] + num_images - 1  # image i has seed + i (checked on resume)
    seeds_dtype = np.uint64 if last_seed > np.iinfo(np.int64).max else np.int64
    grid_images, grid_records = [], []
    npz_tmp, manifest_tmp = out_dir / "samples.npz.tmp", out_dir / "manifest.jsonl.tmp"
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".summaries-") as scratch:
        labels_file, seeds_file = Path(scratch) / "class_labels.npy", Path(scratch) / "seeds.npy"
        labels = np.lib.format.open_memmap(labels_file, "w+", np.int64, (num_images,))
        seeds = np.lib.format.open_memmap(seeds_file, "w+", seeds_dtype, (num_images,))
        with zipfile.ZipFile(npz_tmp, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
            with archive.open("images.npy", "w", force_zip64=True) as npy, manifest_tmp.open("w") as manifest:
                header = {
                    "descr": np.lib.format.dtype_to_descr(first.dtype),
                    "fortran_order": False,
                    "shape": (num_images, *first.shape),
                }
                np.lib.format.write_array_header_2_0(npy, header)
                for index in range(num_images):
                    array, record = (first, first_record) if index == 0 else _read(out_dir, index)
                    if array.shape != first.shape:
                        raise StudioError(
                            f"{image_path(out_dir, index)} is {array.shape}, image 0 is {first.shape}"
                        )
                    npy.write(np.ascontiguousarray(array).tobytes())
                    labels[index] = record.class_labels[0] if record.class_labels else -1
                    seeds[index] = record.seeds[0]
                    manifest.write(
                        json.dumps(
                            {"file": image_path(out_dir, index).name, **record.to_dict()}, sort_keys=True
                        )
                        + "\n"
                    )
                    if index < GRID_MAX_IMAGES:
                        grid_images.append(array)
                        grid_records.append(record)
            labels.flush()
            seeds.flush()
            archive.write(labels_file, "class_labels.npy")
            archive.write(seeds_file, "seeds.npy")
        del labels, seeds  # close the memory maps before their folder goes
    os.replace(npz_tmp, out_dir / "samples.npz")
    os.replace(manifest_tmp, out_dir / "manifest.jsonl")
    grid_record = GenerationRecord.from_dict(
        {  # a new record: the images' own records stay as they are
            **first_record.to_dict(),
            "seeds": [r.seeds[0] for r in grid_records],
            "class_labels": [r.class_labels[0] for r in grid_records] if first_record.class_labels else None,
            "extra": {**first_record.extra, "grid": True},
        }
    )  # marked: a one-image grid has one seed too
    grid = make_grid(np.stack(grid_images))
    _atomic(out_dir / "grid.png", lambda p: grid.save(p, format="PNG", pnginfo=png_info(grid_record)))


def _read(out_dir: Path, index: int) -> tuple[np.ndarray, GenerationRecord]:
    path = image_path(out_dir, index)
    try:
        with Image.open(path) as image:
            array = np.asarray(image)
        record = read_record(str(path))
    except (OSError, ValueError, SyntaxError) as exc:
        raise StudioError(f"cannot read {path}: {exc}") from None
    return (array[..., None] if array.ndim == 2 else array), record


def _save(image: np.ndarray, path: Path, record: GenerationRecord) -> None:
    """`save_png`, with a full disk, a folder gone read-only or a folder in the image's place reported by name."""
    try:
        save_png(image, str(path), record)
    except OSError as exc:
        raise StudioError(f"cannot write {path}: {exc.strerror or exc}") from None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    try:
        _atomic(path, lambda p: Path(p).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))
    except OSError as exc:
        raise StudioError(f"cannot write {path}: {exc.strerror or exc}") from None


def _atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp" + path.suffix)
    write(str(tmp))
    os.replace(tmp, path)
