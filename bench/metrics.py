"""Benchmark studio.metrics: feature-extraction speed, and how FID depends on the sample count.

    python bench/metrics.py [--inception-sizes 500,1000,2000] [--domain-sizes 500,1000,2000,4500]
                            [--draws 5] [--threads 0]

1. Throughput of the two feature networks on MNIST (28 px, grey), in images per second of wall time
   and per second of process CPU time. The CPU figure holds up when other processes share the
   cores. The networks are Inception-v3 (TF FID weights, upsampled to 299 px, 2048-d) and the
   shipped domain classifier (28 px, 128-d).
2. FID of random MNIST-train subsets of n images against the 500 MNIST-val images, for each n.
   Each n is drawn ``--draws`` times (n = 4500 is the whole split, drawn once). The table reports
   mean and spread of Inception FID, Inception KID and the domain FD. Both sets come from one
   distribution, so the true distance is ~0. Whatever FID shows is estimator bias, and it shrinks
   as n grows; KID has no such bias. Inception features cost ~0.2 s per image on CPU, so the default
   Inception sizes stop at 2000 to keep the run near 10 minutes. Pass
   ``--inception-sizes 500,1000,2000,4500`` for the full curve (about twice as long).

Writes ``bench/results/metrics.json`` and ``bench/results/metrics.md``. Never run in CI.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
import torch

from bench.report import write_results
from studio.data import DataConfig, build_dataset
from studio.metrics import (
    GaussianStats,
    frechet_distance,
    inception_v3,
    kernel_inception_distance,
    load_classifier,
)
from studio.metrics.features import classifier_outputs, describe_classifier, shipped_classifier_path

KID_SUBSETS, KID_SUBSET_SIZE = 50, 500


def timed(
    extract: Callable[[torch.Tensor], np.ndarray], images: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Features of ``images`` and the cost of computing them: (images, wall seconds, CPU seconds)."""
    wall, cpu = time.perf_counter(), time.process_time()
    features = extract(images)
    return features, np.array([len(images), time.perf_counter() - wall, time.process_time() - cpu])


def throughput(cost: np.ndarray) -> dict[str, float]:
    """Images per second of wall time and per second of process CPU time from a summed ``timed`` cost."""
    images, wall, cpu = cost
    return {"images": int(images), "images_per_s": images / wall, "images_per_cpu_s": images / cpu}


def distances(train: np.ndarray, val: np.ndarray, index: np.ndarray) -> tuple[float, float]:
    """(FD, KID) of the train rows ``index`` against all of ``val``."""
    subset = train[index]
    fd = frechet_distance(GaussianStats.from_features(subset), GaussianStats.from_features(val))
    kid, _ = kernel_inception_distance(val, subset, KID_SUBSETS, KID_SUBSET_SIZE)
    return fd, kid


def spread(values: list[float]) -> str:
    return f"{np.mean(values):.4g} ± {np.std(values):.2g}" if len(values) > 1 else f"{values[0]:.4g}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    inception_sizes = sorted(int(n) for n in args.inception_sizes.split(","))
    domain_sizes = sorted(int(n) for n in args.domain_sizes.split(","))
    started, loads = time.perf_counter(), [os.getloadavg()[0]]
    data = DataConfig(name="mnist-5k")  # the 5,000-digit set the recorded results used
    train_images, val_images = (
        build_dataset(data, "train").uint8_images(),
        build_dataset(data, "val").uint8_images(),
    )
    # subsets scored by Inception come from one random pool, so only the pool needs Inception features
    rng = np.random.default_rng(0)
    pool = rng.permutation(len(train_images))[: max(inception_sizes)]
    draws = {}
    for n in sorted(set(inception_sizes + domain_sizes)):
        source = pool if n <= len(pool) else np.arange(len(train_images))
        draws[n] = (
            [source]
            if n == len(source)
            else [rng.choice(source, n, replace=False) for _ in range(args.draws)]
        )

    # 1. domain classifier: every image (cheap)
    classifier = load_classifier(shipped_classifier_path("mnist"))

    def domain(images: torch.Tensor) -> np.ndarray:
        return classifier_outputs(classifier, images)[1]

    domain(val_images[:64])  # warm-up
    domain_train, domain_cost = timed(domain, train_images)
    domain_val = domain(val_images)

    # 2. Inception: val and the train pool
    net = inception_v3()

    def inception(images: torch.Tensor) -> np.ndarray:
        return net.extract(images, batch_size=args.batch_size)

    inception(val_images[:4])  # warm-up (TorchScript profiling runs)
    inception_val, val_cost = timed(inception, val_images)
    loads.append(os.getloadavg()[0])
    inception_train = np.full((len(train_images), inception_val.shape[1]), np.nan)  # filled for the pool only
    inception_train[pool], pool_cost = timed(inception, train_images[torch.from_numpy(pool)])
    loads.append(os.getloadavg()[0])
    inception_speed, domain_speed = throughput(val_cost + pool_cost), throughput(domain_cost)

    rows = []
    for n, indices in draws.items():
        row = {"train images (n)": n, "val images": len(val_images), "draws": len(indices)}
        if n in inception_sizes:
            fid, kid = zip(*(distances(inception_train, inception_val, i) for i in indices))
            row.update(
                {
                    "Inception FID": spread(list(fid)),
                    "Inception KID x 1e3": spread([1e3 * k for k in kid]),
                    "fid_values": list(fid),
                    "kid_values": list(kid),
                }
            )
        if n in domain_sizes:
            fd, dkid = zip(*(distances(domain_train, domain_val, i) for i in indices))
            row.update(
                {
                    "domain FD": spread(list(fd)),
                    "domain KID x 1e3": spread([1e3 * k for k in dkid]),
                    "domain_fd_values": list(fd),
                    "domain_kid_values": list(dkid),
                }
            )
        rows.append(row)

    seconds = time.perf_counter() - started
    inception_row = (
        f"| Inception-v3 (TF FID weights, 2048-d) | 28 px grey -> 299 px RGB | {inception_speed['images']} "
        f"| {inception_speed['images_per_s']:.3g} | {inception_speed['images_per_cpu_s']:.3g} |"
    )
    domain_row = (
        f"| domain classifier (shipped MNIST, 128-d) | 28 px grey | {domain_speed['images']} "
        f"| {domain_speed['images_per_s']:.4g} | {domain_speed['images_per_cpu_s']:.4g} |"
    )
    speed_table = (
        "| network | input | images | images/s (wall) | images/s per CPU-second |\n"
        f"|---|---|---|---|---|\n{inception_row}\n{domain_row}"
    )
    notes = f"""
FID of random MNIST-train subsets against the 500 MNIST-val images: one distribution, so every
distance here is estimator bias plus noise ("mean ± std" over the draws column's random subsets).
Domain FD is the Frechet distance in the shipped classifier's penultimate features (not comparable
with Inception FID). KID: {KID_SUBSETS} subsets of min({KID_SUBSET_SIZE}, n, 500). Compare FIDs only at
equal sample counts.

Feature-extraction throughput ({torch.get_num_threads()} torch threads, Inception batch
{args.batch_size}). Load average during the run: {[round(x, 2) for x in loads]} on {os.cpu_count()}
cores. The machine was shared, so the wall rate is pessimistic; the per-CPU-second rate is the
portable one.

{speed_table}

Whole benchmark: {seconds / 60:.1f} min.
"""
    settings = {
        "dataset": "mnist (builtin, 28 px): train 4500 / val 500, split seed 0",
        "inception": net.describe(),
        "classifier": describe_classifier(classifier),
        "inception_sizes": inception_sizes,
        "domain_sizes": domain_sizes,
        "draws": args.draws,
        "draw_seed": 0,
        "kid": {"subsets": KID_SUBSETS, "subset_size": KID_SUBSET_SIZE},
        "throughput": {"inception": inception_speed, "domain_classifier": domain_speed},
        "threads": torch.get_num_threads(),
        "load_average": loads,
        "seconds": round(seconds, 1),
    }
    columns = [
        "train images (n)",
        "val images",
        "draws",
        "Inception FID",
        "Inception KID x 1e3",
        "domain FD",
        "domain KID x 1e3",
    ]
    _, md_path = write_results("metrics", rows, columns, settings=settings)
    table = md_path.read_text()
    md_path.write_text(
        f"# studio.metrics: FID against sample count, feature-extraction speed\n\n{table}\n{notes.strip()}\n"
    )
    print(md_path.read_text())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--inception-sizes", default="500,1000,2000", help="train subset sizes scored with Inception"
    )
    parser.add_argument(
        "--domain-sizes", default="500,1000,2000,4500", help="train subset sizes for the domain FD"
    )
    parser.add_argument("--draws", type=int, default=5, help="random subsets per size")
    parser.add_argument("--batch-size", type=int, default=32, help="Inception batch size")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
