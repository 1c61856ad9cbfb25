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

# fmt: off
EXPECTED = {
    "sagan-mnist": [
        0.7745, 0.0011, 0.0005, 0.9807, 0.0001, 0.8126, 0.9923, 0.2361,
        0.0017, 0.9593, 0.9798, 0.9832, 0.0530, 0.0086, 0.0001, 0.0010,
        0.8227, 0.0770, 0.1395, 0.3800, 0.9727, 0.8186, 0.0209, 0.2251,
        0.0025, 0.0001, 0.0280, 0.9964, 0.0000, 0.0130, 0.9952, 0.1262,
    ],
    "biggan-mnist": [
        0.0083, 0.0457, 0.1024, 0.9838, 0.0018, 0.8777, 0.9962, 0.9496,
        0.0001, 0.1641, 0.0236, 0.0305, 0.0000, 0.0002, 0.0000, 0.0924,
        0.0039, 0.0008, 0.0035, 0.1989, 0.9970, 0.9966, 0.9774, 0.3001,
        0.5956, 0.3433, 0.9495, 0.9992, 0.0001, 0.5161, 0.9997, 0.0161,
    ],
    "dit-mnist": [
        0.0028, 0.9606, 0.9073, 0.0000, 0.0653, 0.0003, 0.4525, 0.9986,
        0.9401, 0.7384, 0.9863, 0.9690, 0.4208, 0.5272, 0.1902, 0.0091,
        0.9974, 0.7061, 0.1021, 0.9794, 0.0091, 0.0000, 0.0112, 0.9986,
        0.0018, 0.3073, 0.7901, 0.9876, 0.0900, 0.0563, 0.0021, 0.9891,
    ],
    "dit-animals": [
        0.6901, 0.9933, 0.9949, 0.9535, 1.0000, 0.9556, 0.9956, 0.9926,
        0.9886, 0.8796, 1.0000, 0.9806, 0.0258, 0.8134, 0.9671, 0.0159,
        0.9902, 0.6121, 0.9163, 1.0000, 0.1362, 0.8890, 0.9996, 0.9879,
        0.3965, 0.9813, 0.9871, 0.9949, 0.5601, 0.8594, 0.1648, 0.9520,
    ],
    "adm-mnist": [
        0.0178, 0.0377, 0.3595, 0.0593, 0.0262, 0.0147, 0.7693, 0.9947,
        0.0113, 0.0670, 0.9963, 0.9315, 0.0175, 0.0067, 0.0171, 0.0301,
        0.9784, 0.6977, 0.2111, 0.9898, 0.0335, 0.0142, 0.0169, 0.9838,
        0.0216, 0.0189, 0.0161, 0.9899, 0.0215, 0.0152, 0.0155, 0.9825,
    ],
    "score-mnist": [
        1.0000, 1.0000, 0.0000, 1.0000, 0.2707, 0.5532, 0.0000, 0.0000,
        0.0000, 0.0000, 0.2040, 0.0000, 1.0000, 0.0000, 0.0000, 1.0000,
        1.0000, 1.0000, 0.0000, 0.0972, 0.0000, 0.0000, 0.4234, 0.0647,
        0.0000, 1.0000, 0.2164, 0.9080, 0.4078, 0.7754, 0.0000, 0.5749,
    ],
    "ncsn-mnist": [
        0.0000, 0.0000, 1.0000, 0.0000, 0.3453, 1.0000, 0.0000, 0.0000,
        0.0000, 1.0000, 0.6435, 0.0000, 1.0000, 0.0000, 1.0000, 0.0000,
        0.0000, 1.0000, 1.0000, 1.0000, 1.0000, 1.0000, 1.0000, 1.0000,
        0.0000, 1.0000, 0.0000, 0.7284, 1.0000, 1.0000, 0.7076, 1.0000,
    ],
    "dsno-mnist": [
        0.0622, 0.4817, 0.3972, 0.0134, 0.0085, 0.0101, 0.5869, 0.9821,
        0.0000, 0.9081, 0.9840, 0.9676, 0.0059, 0.0050, 0.0136, 0.0074,
        0.9813, 0.9722, 0.9608, 0.9917, 0.0069, 0.0000, 0.0034, 0.9877,
        0.0074, 0.0121, 0.0216, 0.9975, 0.0060, 0.0112, 0.8843, 0.7210,
    ],
    "controlnet-mnist": [
        0.0046, 0.9703, 0.4558, 0.4139, 0.0082, 0.0121, 0.0061, 0.8479,
        0.0201, 0.9976, 0.9978, 0.9942, 0.0025, 0.0065, 0.0029, 0.7839,
        0.0051, 0.0243, 0.8653, 0.9989, 0.9687, 0.9295, 0.0129, 0.7114,
        0.3019, 0.0111, 0.0188, 0.9843, 0.0083, 0.0026, 0.9438, 0.0000,
    ],
}
# fmt: on


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
