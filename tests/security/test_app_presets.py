"""Every preset the app's Train tab offers fits `webapp.security.LIMITS`.

Callers choose presets only by name, with no model settings, so the offered presets are what bounds
the size of the networks a caller can make the app build.
"""

from __future__ import annotations

import pytest
import torch

from webapp.security import LIMITS
from webapp.training_runner import training_presets

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_offered_preset_fits_the_limits():
    from studio.data.dataset import dataset_info
    from training.config import load_config
    from training.family import get_family

    offered = training_presets()
    assert offered
    for family_name, presets in offered.items():
        family_cls = get_family(family_name)
        for preset in presets:
            config = load_config(
                family_name, family_cls.config_class, preset, [f"max_steps={LIMITS.max_train_steps}"]
            )
            LIMITS.check_training(config)
            with torch.random.fork_rng():
                models = family_cls(config, dataset_info(config.data)).build_models()
            count = sum(p.numel() for model in models.values() for p in model.parameters())
            assert count <= LIMITS.max_model_parameters, (family_name, preset, count)
