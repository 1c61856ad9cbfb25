"""Put a trained noisy classifier into a trained ADM pipeline, so it samples with classifier guidance.

    python scripts/attach_classifier.py runs/adm-mnist-small runs/adm_classifier-mnist-small \\
        --out runs/adm-mnist-guided

Refuses a classifier trained for another diffusion (T, beta schedule), label set or image size.
Without ``--out`` the ADM run's ``pipeline/`` folder is replaced (atomically) by the guided one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from studio.errors import StudioError
from studio.pipelines.adm import attach_classifier


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adm", help="ADM run or pipeline folder")
    parser.add_argument("classifier", help="adm_classifier run, its pipeline folder, or a classifier folder")
    parser.add_argument(
        "--out", default=None, help="output pipeline folder (default: replace the ADM pipeline)"
    )
    args = parser.parse_args(argv)
    try:
        target = attach_classifier(args.adm, args.classifier, args.out)
    except StudioError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"guided ADM pipeline: {target}")


if __name__ == "__main__":
    main()
