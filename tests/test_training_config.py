"""Family configs nest their network's own config dataclass: each network field is declared once,
in the network's module, and a flat key of the old form names the key that replaced it."""

import dataclasses
import typing

import pytest

from studio.errors import ConfigError
from studio.models.adm import ADMConfig
from studio.models.dit import DiTConfig
from studio.models.gan import BigGANGeneratorConfig, DiscriminatorConfig, SAGANGeneratorConfig
from studio.models.score import ScoreNetConfig
from training.config import available_presets, load_config
from training.family import get_family

#: family -> its config's nested network sections and their dataclasses
NESTED = {
    "adm": {"network": ADMConfig},
    "adm_classifier": {"network": ADMConfig},
    "dit": {"network": DiTConfig},
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
    ],
)
def test_an_old_flat_override_names_the_new_key(family, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(family, get_family(family).config_class, "mnist-tiny", [override])


def test_an_old_flat_preset_names_the_new_key(tmp_path):
    preset = tmp_path / "old.yaml"
    preset.write_text("family: dit\nmodel:\n  patch_size: 4\n  depth: 2\n")
    with pytest.raises(ConfigError, match="model.patch_size moved to model.network.patch_size"):
        load_config("dit", get_family("dit").config_class, str(preset))
