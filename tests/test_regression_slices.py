"""Regression slices of every shipped model (the diffusers habit): a few pinned output pixels per family.

They catch silent behaviour changes (a scheduler default, an init, a loader) that shape-only tests miss.
The tolerance holds across CPUs and thread counts: the same calls differ by at most ~2e-6 between 1 and 2
threads here (float32 rounding of oneDNN kernels, amplified by at most 10-20 sampler steps), while any real
change moves pixels by 0.05 or more. After retraining a shipped model, regenerate its row with
``python tests/regression_cases.py``.
"""

import numpy as np
import pytest
import torch

from tests.regression_cases import CASES, run_case

TOLERANCE = 2e-3  # in [0, 1] pixel units; stored values are rounded to 1e-4

EXPECTED = {
    "sagan-mnist": [
        0.0001, 0.6331, 0.0189, 0.0697, 0.0026, 0.0078, 0.5527, 0.8906,
        0.0049, 0.9565, 0.9988, 0.9986, 0.0030, 0.0035, 0.0001, 0.0014,
        0.1890, 0.2031, 0.7901, 0.9260, 0.0653, 0.0565, 0.0460, 0.9993,
        0.0000, 0.0000, 0.6490, 0.6292, 0.0000, 0.0000, 0.8940, 0.0266,
    ],
    "biggan-mnist": [
        0.0083, 0.0457, 0.1024, 0.9838, 0.0018, 0.8777, 0.9962, 0.9496,
        0.0001, 0.1641, 0.0236, 0.0305, 0.0000, 0.0002, 0.0000, 0.0924,
        0.0039, 0.0008, 0.0035, 0.1989, 0.9970, 0.9966, 0.9774, 0.3001,
        0.5956, 0.3433, 0.9495, 0.9992, 0.0001, 0.5161, 0.9997, 0.0161,
    ],
    "dit-mnist": [
        0.0011, 0.9772, 0.7344, 0.0000, 0.2722, 0.0031, 0.2521, 1.0000,
        0.8307, 0.1172, 0.9999, 0.9671, 0.2554, 0.4885, 0.2861, 0.0235,
        0.9902, 0.7757, 0.2900, 0.9881, 0.0232, 0.0000, 0.0070, 0.9846,
        0.0025, 0.0090, 0.0021, 1.0000, 0.0068, 0.0001, 0.0027, 0.9935,
    ],
    "adm-mnist": [
        0.0232, 0.0800, 0.3707, 0.0453, 0.0365, 0.0178, 0.8156, 0.9897,
        0.0175, 0.0572, 0.9906, 0.9399, 0.0238, 0.0116, 0.0283, 0.0379,
        0.9840, 0.8580, 0.4634, 0.9917, 0.0663, 0.0157, 0.0238, 0.9816,
        0.0287, 0.0238, 0.0219, 0.9924, 0.0334, 0.0210, 0.0123, 0.9828,
    ],
    "score-mnist": [
        1.0000, 1.0000, 0.0000, 0.7256, 0.4432, 1.0000, 0.5612, 0.0000,
        0.0000, 0.0000, 0.6324, 0.0000, 1.0000, 0.0000, 0.2248, 1.0000,
        1.0000, 1.0000, 0.0000, 0.6862, 0.0000, 0.0000, 0.5122, 0.2981,
        0.0000, 1.0000, 0.2636, 1.0000, 0.8556, 0.0362, 0.0000, 1.0000,
    ],
    "dsno-mnist": [
        0.2411, 0.5372, 0.5866, 0.0238, 0.4337, 0.1669, 0.8947, 1.0000,
        0.5205, 0.5037, 1.0000, 0.7996, 0.1604, 0.0000, 0.2153, 0.4554,
        0.9219, 0.9273, 0.9514, 0.9518, 0.1551, 0.0659, 0.0834, 0.9271,
        0.1042, 0.0991, 0.2727, 0.9411, 0.0937, 0.0928, 0.8497, 0.3768,
    ],
    "controlnet-mnist": [
        0.4467, 1.0000, 0.9980, 0.0009, 0.9556, 0.2028, 0.8447, 0.9991,
        0.7803, 0.5628, 1.0000, 0.6294, 0.3712, 0.2234, 0.8385, 1.0000,
        0.8677, 0.3746, 0.3015, 0.9980, 0.9992, 0.0387, 0.1847, 0.9900,
        0.2735, 0.3890, 0.5393, 0.9996, 0.4201, 0.1656, 0.6523, 0.5541,
    ],
}


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    """Each slice is checked at 1 and 2 torch threads: both must land within the same tolerance."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def test_every_shipped_family_has_a_pinned_slice():
    assert set(EXPECTED) == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_shipped_model_output_matches_its_pinned_slice(name, threads):
    np.testing.assert_allclose(run_case(name), np.array(EXPECTED[name]), rtol=0, atol=TOLERANCE)
