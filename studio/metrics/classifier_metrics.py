"""Domain metrics read from a classifier's logits: class accuracy and the classifier score.

Both use the dataset's own `StudioClassifier`, not Inception, so their numbers are comparable only
with other numbers from the same classifier checkpoint (the results record its hash).
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax, softmax

from studio.errors import MetricError


def class_accuracy(logits: np.ndarray, class_labels: np.ndarray) -> float:
    """Share of images whose predicted class (argmax of ``logits`` (N, K)) equals ``class_labels`` (N,).

    For conditional samples ``class_labels`` are the requested classes, so this measures how often
    the generator draws the class it was asked for.
    """
    class_labels = np.asarray(class_labels)
    if len(logits) == 0:
        raise MetricError("class accuracy needs at least one image")
    if class_labels.shape != (len(logits),):
        raise MetricError(
            f"class accuracy needs one class label per image: {len(logits)} images, "
            f"labels of shape {class_labels.shape}"
        )
    num_classes = logits.shape[1]
    if class_labels.min() < 0 or class_labels.max() >= num_classes:
        raise MetricError(
            f"class labels must lie in 0..{num_classes - 1} (the classifier's classes), "
            f"got {class_labels.min()}..{class_labels.max()}"
        )
    return float(np.mean(logits.argmax(axis=1) == class_labels))


def classifier_score(logits: np.ndarray) -> float:
    """exp(E_x KL(p(y|x) || p(y))): the Inception Score formula on a domain classifier's logits.

    Ranges from 1 (every image gets the same prediction) to K (confident and spread evenly over K
    classes). One split over all images, as StudioGAN does. Not an Inception Score: never compare it
    with published IS numbers.
    """
    if len(logits) < 2:
        raise MetricError(f"the classifier score needs at least 2 images, got {len(logits)}")
    log_p_yx = log_softmax(logits, axis=1)  # (N, K)
    p_y = softmax(logits, axis=1).mean(axis=0)  # (K,)
    kl = np.sum(np.exp(log_p_yx) * (log_p_yx - np.log(np.maximum(p_y, 1e-300))), axis=1)
    return float(np.exp(kl.mean()))
