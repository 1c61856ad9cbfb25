"""GAN building blocks and losses: spectral norm, attention, conditional BN, projection D, hinge,
orthogonal regularisation, truncation, hierarchical latents (SAGAN: Zhang et al. 2019; BigGAN: Brock et al. 2019)."""

from functools import partial

import pytest
import torch
from torch import nn

from studio.errors import ConfigError, StudioError
from studio.models.gan import (
    BigGANGenerator,
    BigGANGeneratorConfig,
    DiscriminatorConfig,
    ProjectionDiscriminator,
    SAGANGenerator,
    SAGANGeneratorConfig,
)
from studio.models.gan.layers import ConditionalBatchNorm2d, SelfAttention2d, sn_conv2d
from studio.models.gan.losses import (
    discriminator_hinge_loss,
    generator_hinge_loss,
    orthogonal_regularization,
    orthogonal_targets,
)
from studio.models.gan.truncation import truncated_normal

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_sagan(num_classes=10, image_size=28, channels=1):
    torch.manual_seed(0)
    return SAGANGenerator.from_arch(
        SAGANGeneratorConfig(
            image_size=image_size,
            out_channels=channels,
            num_classes=num_classes,
            z_dim=16,
            width=8,
            attention_resolution=14 if image_size == 28 else 16,
        )
    )


def tiny_biggan(num_classes=10, image_size=28, channels=1):
    torch.manual_seed(0)
    return BigGANGenerator.from_arch(
        BigGANGeneratorConfig(
            image_size=image_size,
            out_channels=channels,
            num_classes=num_classes,
            z_dim=24 if image_size == 28 else 32,
            shared_dim=8,
            width=8,
            attention_resolution=14 if image_size == 28 else 16,
        )
    )


def tiny_discriminator(num_classes=10, image_size=28, channels=1):
    torch.manual_seed(0)
    return ProjectionDiscriminator(
        DiscriminatorConfig(
            image_size=image_size,
            in_channels=channels,
            num_classes=num_classes,
            width=8,
            attention_resolution=14 if image_size == 28 else 16,
        )
    )


def spectral_modules(model):
    return [m for m in model.modules() if hasattr(m, "parametrizations")]


# ------------------------------------------------------------------------------------------------
# spectral norm


def test_spectral_norm_layers_have_unit_top_singular_value_after_power_iterations():
    generator, discriminator = tiny_biggan(), tiny_discriminator()
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    z = torch.randn(4, generator.z_dim)
    for _ in range(20):  # one power iteration per train-mode forward
        generator(z, y)
        discriminator(x, y)
    layers = spectral_modules(generator) + spectral_modules(discriminator)
    assert len(layers) > 20
    generator.eval(), discriminator.eval()
    for layer in layers:
        weight = layer.weight.detach().flatten(1)  # SN constrains the reshaped (out, in*k*k) matrix
        sigma = torch.linalg.matrix_norm(weight, ord=2).item()
        assert sigma == pytest.approx(1.0, abs=0.01), layer
        assert torch.equal(layer.weight, layer.weight)  # eval mode: no power iteration, the weight is fixed


# ------------------------------------------------------------------------------------------------
# self-attention, conditional BN, projection


def test_self_attention_is_identity_at_init_and_nonlocal_when_open():
    torch.manual_seed(0)
    attention = SelfAttention2d(16, partial(sn_conv2d)).eval()
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(attention(x), x)  # gamma starts at 0
    with torch.no_grad():
        attention.gamma.fill_(1.0)
    moved = x.clone()
    moved[:, :, 0, 0] += 5.0
    assert not torch.allclose(attention(moved)[:, :, -1, -1], attention(x)[:, :, -1, -1])


def test_self_attention_refuses_odd_feature_maps():
    with pytest.raises(ConfigError, match="no feature map of side 7"):
        SAGANGenerator.from_arch(SAGANGeneratorConfig(width=8, attention_resolution=7))  # 7x7 is G's input
    with pytest.raises(ConfigError, match="even-sided"):
        ProjectionDiscriminator(DiscriminatorConfig(width=8, attention_resolution=7))
    with pytest.raises(ConfigError, match="no feature map of side 9"):
        ProjectionDiscriminator(DiscriminatorConfig(width=8, attention_resolution=9))


def test_conditional_bn_with_zero_maps_is_plain_bn_and_depends_on_class_otherwise():
    torch.manual_seed(0)
    norm = ConditionalBatchNorm2d(4, 10, linear=partial(nn.Linear, bias=False))
    x = torch.randn(8, 4, 5, 5)
    onehot = nn.functional.one_hot(torch.arange(8) % 10, 10).float()
    with torch.no_grad():
        norm.gain.weight.zero_()
        norm.bias.weight.zero_()
    plain = nn.BatchNorm2d(4, eps=1e-4, affine=False)
    assert torch.allclose(norm(x, onehot), plain(x), atol=1e-6)
    with torch.no_grad():
        norm.gain.weight.normal_()
        norm.bias.weight.normal_()
    other = nn.functional.one_hot((torch.arange(8) + 1) % 10, 10).float()
    assert not torch.allclose(norm(x, onehot), norm(x, other))


def test_projection_discriminator_adds_class_embedding_dot_features():
    discriminator = tiny_discriminator().eval()
    x = torch.randn(6, 1, 28, 28)
    y, y_other = torch.arange(6), (torch.arange(6) + 3) % 10
    with torch.no_grad():
        h = discriminator.features(x)
        table = discriminator.projection.embedding.weight  # SN-normalised (K, C) table
        expected = discriminator.linear(h).squeeze(1) + (table[y] * h).sum(1)
        assert torch.allclose(discriminator(x, y), expected, atol=1e-5)
        shift = discriminator(x, y) - discriminator(x, y_other)
        assert torch.allclose(shift, ((table[y] - table[y_other]) * h).sum(1), atol=1e-4)
    unconditional = tiny_discriminator(num_classes=0).eval()
    with torch.no_grad():
        assert torch.equal(unconditional(x, y), unconditional(x, y_other))


@pytest.mark.parametrize("build", [tiny_sagan, tiny_biggan])
@pytest.mark.parametrize("num_classes,image_size,channels", [(10, 28, 1), (0, 28, 1), (6, 32, 3)])
def test_generator_and_discriminator_shapes_and_ranges(build, num_classes, image_size, channels):
    generator = build(num_classes, image_size, channels)
    discriminator = tiny_discriminator(num_classes, image_size, channels)
    labels = torch.randint(0, max(num_classes, 1), (3,)) if num_classes else None
    images = generator(torch.randn(3, generator.z_dim), labels)
    assert images.shape == (3, channels, image_size, image_size)
    assert images.abs().max() <= 1.0
    assert discriminator(images, labels).shape == (3,)


def test_conditional_generator_needs_labels():
    with pytest.raises(ValueError, match="class-conditional"):
        tiny_sagan()(torch.randn(2, 16))
    with pytest.raises(ValueError, match="class-conditional"):
        tiny_biggan()(torch.randn(2, 24))


# ------------------------------------------------------------------------------------------------
# BigGAN specifics


def test_hierarchical_latent_chunk_i_only_reaches_block_i():
    generator = tiny_biggan().eval()
    config = generator.arch
    assert (
        config.num_chunks == len(generator.trunk.blocks) + 1 and config.chunk_size * config.num_chunks == 24
    )
    seen = {}
    hooks = [
        block.norm1.register_forward_hook(lambda m, args, out, i=i: seen.__setitem__(i, args[1].clone()))
        for i, block in enumerate(generator.trunk.blocks)
    ]
    z, y = torch.randn(2, 24), torch.tensor([1, 2])
    generator(z, y)
    before = dict(seen)
    changed = z.clone()
    changed[:, 2 * config.chunk_size :] += 1.0  # chunk 2 -> block 2 (index 1)
    generator(changed, y)
    assert torch.equal(seen[0], before[0]) and not torch.equal(seen[1], before[1])
    shared = generator.shared(y, z)
    assert torch.equal(seen[1][:, : config.shared_dim], shared)  # [e_y, z_i]: embedding first
    for hook in hooks:
        hook.remove()


def test_biggan_refuses_a_latent_that_does_not_split_evenly():
    with pytest.raises(ConfigError, match="not divisible by 3"):
        BigGANGenerator.from_arch(BigGANGeneratorConfig(z_dim=50))
    with pytest.raises(ConfigError, match="image sizes"):
        BigGANGeneratorConfig(image_size=20).validate()


def test_orthogonal_regularization_zero_on_orthogonal_rows_positive_otherwise():
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(16, 8))  # (16, 8) orthonormal columns
    rows = q.T  # (8, 16): orthonormal rows
    assert orthogonal_regularization([rows], 1e-4).item() <= 1e-10
    rescaled = rows * torch.linspace(0.5, 3.0, 8)[:, None]  # norms are not penalised
    assert orthogonal_regularization([rescaled], 1e-4).item() <= 1e-10
    random = torch.randn(8, 16)
    assert orthogonal_regularization([random], 1e-4).item() > 1e-4
    conv = torch.randn(8, 2, 3, 3)  # reshaped to (8, 18)
    assert orthogonal_regularization([conv], 1.0).item() > 0


def test_orthogonal_regularization_gradient_matches_biggan_pytorch():
    torch.manual_seed(0)
    weight = torch.randn(6, 10, requires_grad=True)
    beta = 1e-4
    orthogonal_regularization([weight], beta).backward()
    w = weight.detach()
    off_diagonal = (w @ w.T) * (1 - torch.eye(6))
    assert torch.allclose(weight.grad, 2 * beta * off_diagonal @ w, rtol=1e-5, atol=1e-10)


def test_orthogonal_targets_skip_1d_params_and_the_shared_embedding():
    generator = tiny_biggan()
    targets = orthogonal_targets(generator)
    names = {id(p): n for n, p in generator.named_parameters()}
    touched = {names[id(p)] for p in targets}
    assert all(n.endswith("parametrizations.weight.original") for n in touched)  # raw, pre-SN weights
    assert "shared.embedding.weight" not in touched
    expected = {n for n, p in generator.named_parameters() if p.ndim >= 2 and not n.startswith("shared.")}
    assert touched == expected
    assert len(touched) == len(spectral_modules(generator))


# ------------------------------------------------------------------------------------------------
# losses and truncation


def test_hinge_losses_have_the_right_signs():
    ones, zeros = torch.ones(8), torch.zeros(8)
    real, fake = discriminator_hinge_loss(ones, -ones)  # D at the margins: no loss
    assert real.item() == 0 and fake.item() == 0
    real, fake = discriminator_hinge_loss(zeros, zeros)
    assert real.item() + fake.item() == 2.0
    real, fake = discriminator_hinge_loss(-ones, ones)  # confidently wrong
    assert real.item() == 2.0 and fake.item() == 2.0
    real, fake = discriminator_hinge_loss(3 * ones, -3 * ones)  # beyond the margin: still 0
    assert real.item() == 0 and fake.item() == 0
    assert generator_hinge_loss(ones) < generator_hinge_loss(zeros) < generator_hinge_loss(-ones)
    assert generator_hinge_loss(2 * ones).item() == -2.0


def test_truncated_latents_stay_within_the_threshold():
    generator = torch.Generator().manual_seed(0)
    for threshold in (0.05, 0.5, 1.0, 2.0):
        z = torch.stack([truncated_normal(64, threshold, generator) for _ in range(50)])
        assert z.abs().max() <= threshold
        assert z.abs().max() > 0.8 * threshold  # redrawn, not clipped or scaled into a corner
    wide = torch.stack([truncated_normal(64, 50.0, generator) for _ in range(200)])
    assert abs(wide.mean().item()) < 0.05 and abs(wide.std().item() - 1) < 0.05
    assert torch.equal(truncated_normal(8, 0.0, generator), torch.zeros(8))
    untruncated = truncated_normal(8, None, torch.Generator().manual_seed(3))
    assert torch.equal(untruncated, torch.randn(8, generator=torch.Generator().manual_seed(3)))
    with pytest.raises(StudioError, match=">= 0"):
        truncated_normal(8, -1.0, generator)
