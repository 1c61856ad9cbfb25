"""Family configs nest their network's own config dataclass: each network field is declared once,
in the network's module, and a flat key of the old form names the key that replaced it."""

import dataclasses
import typing

import pytest

from studio.errors import ConfigError
from studio.models.adm import ADMConfig
from studio.models.classifier import ClassifierConfig
from studio.models.dit import DiTConfig
from studio.models.dsno import DSNOStudentConfig
from studio.models.gan import BigGANGeneratorConfig, DiscriminatorConfig, SAGANGeneratorConfig
from studio.models.score import ScoreNetConfig
from training.config import available_presets, load_config
from training.family import get_family

#: family -> its config's nested network sections and their dataclasses
NESTED = {
    "adm": {"network": ADMConfig},
    "adm_classifier": {"network": ADMConfig},
    "classifier": {"network": ClassifierConfig},
    "dit": {"network": DiTConfig},
    "dsno": {"network": DSNOStudentConfig},
    "score": {"network": ScoreNetConfig},
    "sagan": {"generator": SAGANGeneratorConfig, "discriminator": DiscriminatorConfig},
    "biggan": {"generator": BigGANGeneratorConfig, "discriminator": DiscriminatorConfig},
}


def field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("family", sorted(NESTED))
def test_network_fields_are_declared_only_in_the_network_config(family):
    config_class = get_family(family).config_class
    hints = typing.get_type_hints(config_class)
    for section, network_class in NESTED[family].items():
        assert hints[section] is network_class, (family, section)
        repeated = field_names(config_class) & field_names(network_class)
        assert not repeated, f"{config_class.__name__} repeats {network_class.__name__} fields {repeated}"


@pytest.mark.parametrize("family", sorted(NESTED))
def test_every_preset_loads_in_the_nested_form(family):
    for preset in available_presets()[family]:
        config = load_config(family, get_family(family).config_class, preset)
        for section, network_class in NESTED[family].items():
            assert isinstance(getattr(config.model, section), network_class), (family, preset, section)


def test_presets_set_the_network_under_its_section():
    dit = load_config("dit", get_family("dit").config_class, "mnist-tiny").model
    assert (dit.network.depth, dit.network.num_heads) == (2, 2)
    biggan = load_config("biggan", get_family("biggan").config_class, "photos-small").model
    assert (biggan.generator.z_dim, biggan.generator.attention_resolution) == (64, 16)
    assert (biggan.discriminator.width, biggan.discriminator.init) == (16, "orthogonal")
    score = load_config("score", get_family("score").config_class, "mnist-small").model
    assert score.network.block_out_channels == (32, 64, 64)
    dsno = load_config("dsno", get_family("dsno").config_class, "mnist-cpu").model
    assert (dsno.network.num_slices, dsno.network.modes, dsno.network.output_param) == (4, 2, "x0_ddim")
    assert (dsno.teacher, dsno.teacher_steps, dsno.guidance_scale) == ("adm-mnist", 25, 2.0)
    classifier = load_config("classifier", get_family("classifier").config_class, "animals").model
    assert classifier.network.block_channels == (32, 64, 128) and classifier.visualise_steps == 100


@pytest.mark.parametrize(
    ("family", "preset", "overrides", "expected"),
    [
        (
            "dsno",
            "mnist-tiny",
            ["model.network.num_slices=6", "model.network.modes=3", "model.network.tconv_init=zero"],
            {"num_slices": 6, "modes": 3, "tconv_init": "zero", "output_param": "x0_ddim"},
        ),
        (
            "dsno",
            "mnist-tiny",
            ["model.network.output_param=state"],
            {"num_slices": 4, "output_param": "state"},
        ),
        (
            "classifier",
            "mnist",
            [
                "model.network.block_channels=[8,16]",
                "model.network.feature_dim=32",
                "model.network.dropout=0",
            ],
            {"block_channels": (8, 16), "feature_dim": 32, "dropout": 0.0},
        ),
    ],
)
def test_nested_network_overrides_are_accepted(family, preset, overrides, expected):
    network = load_config(family, get_family(family).config_class, preset, overrides).model.network
    assert {key: getattr(network, key) for key in expected} == expected


@pytest.mark.parametrize(
    ("family", "override", "message"),
    [
        ("dit", "model.depth=4", "model.depth moved to model.network.depth"),
        ("score", "model.norm_num_groups=4", "model.norm_num_groups moved to model.network.norm_num_groups"),
        ("biggan", "model.shared_dim=16", "model.shared_dim moved to model.generator.shared_dim"),
        (
            "sagan",
            "model.width=8",
            "model.width moved to model.generator.width and model.discriminator.width",
        ),
        ("dsno", "model.num_slices=4", "model.num_slices moved to model.network.num_slices"),
        ("dsno", "model.modes=2", "model.modes moved to model.network.modes"),
        ("dsno", "model.output_param=state", "model.output_param moved to model.network.output_param"),
        ("dsno", "model.tconv_init=zero", "model.tconv_init moved to model.network.tconv_init"),
        (
            "adm_classifier",
            "model.model_channels=8",
            "model.model_channels moved to model.network.model_channels",
        ),
    ],
)
def test_an_old_flat_override_names_the_new_key(family, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(family, get_family(family).config_class, "mnist-tiny", [override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.block_channels=[8,16]", "model.block_channels moved to model.network.block_channels"),
        ("model.feature_dim=32", "model.feature_dim moved to model.network.feature_dim"),
        ("model.dropout=0.1", "model.dropout moved to model.network.dropout"),
    ],
)
def test_an_old_flat_classifier_override_names_the_new_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("classifier", get_family("classifier").config_class, "mnist", [override])


def test_an_old_flat_preset_names_the_new_key(tmp_path):
    preset = tmp_path / "old.yaml"
    preset.write_text("family: dit\nmodel:\n  patch_size: 4\n  depth: 2\n")
    with pytest.raises(ConfigError, match="model.patch_size moved to model.network.patch_size"):
        load_config("dit", get_family("dit").config_class, str(preset))


@pytest.mark.parametrize(
    ("family", "text", "message"),
    [
        (
            "dsno",
            "family: dsno\nmodel:\n  teacher: random\n  num_slices: 4\n  modes: 2\n",
            "model.num_slices moved to model.network.num_slices",
        ),
        (
            "classifier",
            "family: classifier\nmodel:\n  block_channels: [16, 32]\n  visualise_steps: 5\n",
            "model.block_channels moved to model.network.block_channels",
        ),
    ],
)
def test_an_old_flat_dsno_or_classifier_preset_names_the_new_key(tmp_path, family, text, message):
    preset = tmp_path / "old.yaml"
    preset.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(family, get_family(family).config_class, str(preset))


def test_settings_that_are_not_network_shape_stay_directly_under_model():
    dsno = get_family("dsno").config_class()
    for name in ("teacher", "teacher_steps", "guidance_scale", "loss_weighting", "num_pairs", "trajectories"):
        assert hasattr(dsno, name) and not hasattr(dsno.network, name), name
    classifier = get_family("classifier").config_class()
    assert hasattr(classifier, "visualise_steps") and not hasattr(classifier.network, "visualise_steps")
    config = load_config(
        "dsno", get_family("dsno").config_class, "mnist-tiny", ["model.teacher_steps=16", "model.num_pairs=8"]
    )
    assert (config.model.teacher_steps, config.model.num_pairs) == (16, 8)


@pytest.mark.parametrize(
    ("family", "preset", "override", "message"),
    [
        ("dsno", "mnist-tiny", "model.network.num_slices=0", r"model\.network\.num_slices must be"),
        ("dsno", "mnist-tiny", "model.network.modes=0", r"model\.network\.modes must be"),
        # 4 slices have at most 4 // 2 + 1 = 3 Fourier modes: refused before any trajectory is recorded
        (
            "dsno",
            "mnist-tiny",
            "model.network.modes=4",
            r"model\.network\.modes must be an integer from 1 to 3",
        ),
        (
            "dsno",
            "mnist-tiny",
            "model.network.output_param=eps",
            r"unknown model\.network\.output_param 'eps'",
        ),
        ("dsno", "mnist-tiny", "model.network.tconv_init=ones", r"unknown model\.network\.tconv_init 'ones'"),
        ("dsno", "mnist-tiny", "model.teacher_steps=0", r"model\.teacher_steps must be"),
        (
            "dit",
            "mnist-tiny",
            "optim.lr_schedule=step",
            r"optim\.lr_schedule must be one of constant, cosine, linear",
        ),
        (
            "classifier",
            "mnist",
            "model.network.block_channels=[16,0]",
            r"model\.network\.block_channels must be",
        ),
        ("classifier", "mnist", "model.network.feature_dim=0", r"model\.network\.feature_dim must be"),
        ("classifier", "mnist", "model.network.dropout=1.5", r"model\.network\.dropout must be"),
        ("classifier", "mnist", "model.visualise_steps=-1", r"model\.visualise_steps must be"),
        (
            "adm_classifier",
            "mnist-tiny",
            "model.network.head_channels=0",
            r"model\.network\.head_channels must be",
        ),
    ],
)
def test_validate_errors_name_the_dotted_path(family, preset, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(family, get_family(family).config_class, preset, [override])


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
def test_the_lr_warms_up_then_holds_or_decays_to_zero_at_max_steps(schedule):
    """``optim.lr_schedule``: after ``warmup_steps`` the peak LR, then constant or a decay reaching 0 at ``max_steps``."""
    import torch

    from studio.data.dataset import dataset_info

    overrides = ["max_steps=100", "optim.warmup_steps=10", "optim.lr=1e-3", f"optim.lr_schedule={schedule}"]
    config = load_config("dit", get_family("dit").config_class, "mnist-tiny", overrides)
    family = get_family("dit")(config, dataset_info(config.data))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.optim.lr)
    lr_schedule = family.lr_schedules({"net": optimizer})["net"]
    rates = []
    for _ in range(100):
        rates.append(lr_schedule.get_last_lr()[0])
        optimizer.step()
        lr_schedule.step()
    assert rates[0] == 0 and rates[10] == pytest.approx(1e-3)
    middle, last = rates[55], lr_schedule.get_last_lr()[0]
    if schedule == "constant":
        assert middle == last == pytest.approx(1e-3)
    else:
        assert middle == pytest.approx(5e-4, rel=0.02) and last == pytest.approx(0, abs=1e-12)
