"""Evaluation: FID, KID, precision/recall/density/coverage, domain metrics and a memorisation check.

``evaluate`` is the entry point (CLI: ``studio eval``; training: every N steps). The numerics live
in one small module each (`frechet`, `kid`, `prdc`, `classifier_metrics`, `memorisation`) and
work on plain arrays; `features` turns images into vectors, `reference` caches reference
statistics on disk, `samples` reads folders and npz files. `judged` draws a model's class-balanced
samples and reads them with the shipped judge, the one way the quality board, the shipping script and
the app's run score measure a model.
"""

from studio.metrics.classifier_metrics import class_accuracy, classifier_score
from studio.metrics.evaluate import EvalConfig, EvalResult, available_metrics, evaluate, register_metric
from studio.metrics.features import FeatureNet, inception_v3, load_classifier
from studio.metrics.frechet import GaussianStats, frechet_distance
from studio.metrics.judged import DrawnSamples, JudgeScores, draw_samples, judge_scores
from studio.metrics.kid import kernel_inception_distance
from studio.metrics.memorisation import memorisation
from studio.metrics.prdc import prdc
from studio.metrics.samples import ImageSet, image_set, load_images

__all__ = [
    "DrawnSamples",
    "EvalConfig",
    "EvalResult",
    "FeatureNet",
    "GaussianStats",
    "ImageSet",
    "JudgeScores",
    "available_metrics",
    "class_accuracy",
    "classifier_score",
    "draw_samples",
    "evaluate",
    "frechet_distance",
    "image_set",
    "inception_v3",
    "judge_scores",
    "kernel_inception_distance",
    "load_classifier",
    "load_images",
    "memorisation",
    "prdc",
    "register_metric",
]
