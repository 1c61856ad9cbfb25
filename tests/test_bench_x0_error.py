"""`studio bench x0-error`: the data-prediction error per timestep, exact for an exact network, and its errors."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from bench.x0_error import x0_error_rows
from studio.diffusion.gaussian import GaussianDiffusion, make_betas
from studio.errors import StudioError
from studio.hub import save_pipeline
from studio.pipelines.adm import StudioADMPipeline
from studio_cli import main
from tests.builders import CONTROL_ADM, adm_scheduler, tiny_adm_pipeline, tiny_adm_unet, tiny_dit_pipeline


class NoiseOracle(torch.nn.Module):
    """A 'network' that returns the noise it was given, plus ``error`` (ε̂ = ε + error)."""

    def __init__(self, images: torch.Tensor, alphas_cumprod, error: float):
        super().__init__()
        self.images, self.alphas_cumprod, self.error = images, alphas_cumprod, error

    def forward(self, noisy, timesteps, class_labels=None):
        alpha_bar = float(self.alphas_cumprod[int(timesteps[0])])
        noise = (noisy - alpha_bar**0.5 * self.images) / (1 - alpha_bar) ** 0.5
        return SimpleNamespace(sample=noise + self.error)


def test_an_exact_network_has_no_x0_error_and_a_constant_eps_error_is_amplified_by_sigma():
    diffusion = GaussianDiffusion(betas=make_betas("squaredcos_cap_v2", 1000))
    images = torch.rand(8, 1, 6, 6, generator=torch.Generator().manual_seed(0)) * 2 - 1
    exact = x0_error_rows(
        NoiseOracle(images, diffusion.alphas_cumprod, 0.0), diffusion, images, None, [999, 500]
    )
    assert all(row["x0_rmse_raw"] < 1e-3 and row["clip_saturated"] == 0.0 for row in exact[1:])
    off = x0_error_rows(
        NoiseOracle(images, diffusion.alphas_cumprod, 0.01), diffusion, images, None, [999, 500]
    )
    for row in off:
        assert row["eps_rmse"] == pytest.approx(0.01, rel=1e-3)
        assert row["x0_rmse_raw"] == pytest.approx(
            0.01 * (1 - row["alpha_bar"]) ** 0.5 / row["alpha_bar"] ** 0.5, rel=1e-3
        )
    assert off[0]["sigma"] > 1e4 and off[0]["clip_saturated"] == 1.0  # t = 999: every pixel clipped
    assert off[0]["mean_image_rmse"] == pytest.approx(float((images - images.mean(0)).pow(2).mean().sqrt()))


def test_bench_writes_a_row_per_timestep_for_an_adm_run(tmp_path):
    folder = tmp_path / "adm"
    pipe = StudioADMPipeline(unet=tiny_adm_unet(CONTROL_ADM), scheduler=adm_scheduler())  # 10 classes, 16 px
    save_pipeline(pipe, folder, {"dataset": "mnist"})
    out = tmp_path / "x0"
    argv = [
        "bench",
        "x0-error",
        "--model",
        str(folder),
        "--n",
        "6",
        "--timesteps",
        "999,10",
        "--name",
        str(out),
    ]
    assert main(argv) == 0
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [row["timestep"] for row in rows] == [999, 10]
    assert rows[0]["sigma"] > rows[1]["sigma"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--timesteps", "a,b"], "--timesteps takes comma-separated integers"),
        (["--n", "1"], "--n must be at least 2"),
    ],
)
def test_bad_arguments_are_refused_by_name(extra, message, capsys):
    assert main(["bench", "x0-error", *extra]) == 2
    assert message in capsys.readouterr().err


def test_other_families_class_counts_and_timesteps_out_of_range_are_refused(tmp_path, capsys):
    folder = tmp_path / "dit"
    save_pipeline(tiny_dit_pipeline(), folder, {"dataset": "mnist"})
    assert main(["bench", "x0-error", "--model", str(folder), "--n", "4"]) == 2
    assert "x0-error reads ADM models" in capsys.readouterr().err
    save_pipeline(tiny_adm_pipeline(with_classifier=False), tmp_path / "adm4", {"dataset": "mnist"})
    assert main(["bench", "x0-error", "--model", str(tmp_path / "adm4"), "--n", "4"]) == 2
    assert "draws 4 classes but its data set 'mnist' has 10" in capsys.readouterr().err
    diffusion = GaussianDiffusion(betas=make_betas("linear", 10))
    with pytest.raises(StudioError, match=r"outside 0\.\.9"):
        x0_error_rows(None, diffusion, torch.zeros(2, 1, 4, 4), None, [10])
