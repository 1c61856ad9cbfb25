"""Channel plans of the ResNet GANs per image resolution (BigGAN-PyTorch ``G_arch`` / ``D_arch``).

Widths are multiples of a base width ``ch``. The 32/64/128/256 px plans are BigGAN's;
28 px (MNIST) has its own plan because 28 is not a power of two: G starts from a 7x7 map and
upsamples twice, D halves twice (28 -> 14 -> 7) and ends with blocks at 7x7.
"""

from __future__ import annotations

from dataclasses import dataclass

from studio.errors import ConfigError


@dataclass(frozen=True)
class GANArch:
    """One resolution's plan.

    :param bottom_size: side of G's first feature map.
    :param g_multipliers: G widths / ch: the first map's, then every up-block's output.
    :param d_multipliers: D widths / ch: every block's output (the first block reads the image).
    :param d_downsample: per D block, whether it halves the resolution (the first always does).
    """

    bottom_size: int
    g_multipliers: tuple[int, ...]
    d_multipliers: tuple[int, ...]
    d_downsample: tuple[bool, ...]

    @property
    def num_g_blocks(self) -> int:
        return len(self.g_multipliers) - 1

    def g_resolutions(self) -> list[int]:
        """Output side of every G up-block."""
        return [self.bottom_size * 2 ** (i + 1) for i in range(self.num_g_blocks)]

    def d_resolutions(self, image_size: int) -> list[int]:
        """Output side of every D block."""
        sides, side = [], image_size
        for down in self.d_downsample:
            side = side // 2 if down else side
            sides.append(side)
        return sides


ARCHS: dict[int, GANArch] = {
    28: GANArch(7, (2, 2, 1), (1, 2, 2, 2), (True, True, False, False)),
    32: GANArch(4, (4, 4, 4, 4), (4, 4, 4, 4), (True, True, False, False)),
    64: GANArch(4, (16, 16, 8, 4, 2), (1, 2, 4, 8, 16), (True, True, True, True, False)),
    128: GANArch(4, (16, 16, 8, 4, 2, 1), (1, 2, 4, 8, 16, 16), (True, True, True, True, True, False)),
    256: GANArch(4, (16, 16, 8, 8, 4, 2, 1), (1, 2, 4, 8, 8, 16, 16), (True,) * 6 + (False,)),
}


def gan_arch(image_size: int) -> GANArch:
    """The channel plan for ``image_size`` (a key of `ARCHS`)."""
    if image_size not in ARCHS:
        raise ConfigError(f"GANs support image sizes {', '.join(map(str, ARCHS))}; got {image_size}")
    return ARCHS[image_size]


def attention_flags(resolutions: list[int], attention_resolution: int, net: str) -> list[bool]:
    """Per block, whether self-attention follows it: after the first block whose output side is
    ``attention_resolution`` (0 = no attention). Refuses sides no block produces and odd sides
    (the block's 2x2-pooled keys would not tile the map)."""
    if attention_resolution == 0:
        return [False] * len(resolutions)
    if attention_resolution not in resolutions:
        raise ConfigError(
            f"{net} has no feature map of side {attention_resolution} for self-attention "
            f"(its block outputs are {sorted(set(resolutions))}; 0 turns attention off)"
        )
    if attention_resolution % 2:
        raise ConfigError(
            f"self-attention needs an even-sided feature map, got {attention_resolution}x"
            f"{attention_resolution}"
        )
    first = resolutions.index(attention_resolution)
    return [i == first for i in range(len(resolutions))]
