"""Keeps timm's augmentations working on the libraries installed beside it.

Posterize with 0 bits: timm's RandAugment maps the top magnitude of its increasing variants
(`rand-m9-mstd0.5-inc1`, the DeiT/ViT recipe, draws magnitude 10 about once in 44 ops) and
some AutoAugment levels (`v0`) to "keep 0 bits", which Pillow up to 12.3 turns into a black image
and Pillow 13 refuses (`ValueError: bits must be between or equal to 1 and 8`), ending a run in
its first minutes. Here 0 bits gives Pillow's former black image, so a recipe trains the same on
every Pillow; other bit counts go to timm's own op untouched.
"""

from PIL import Image
from timm.data import auto_augment

_timm_posterize = auto_augment.posterize


def posterize(img: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    """timm's posterize op, with 0 bits kept as Pillow < 13 kept them: every channel 0."""
    if bits_to_keep < 1:
        return Image.new(img.mode, img.size)
    return _timm_posterize(img, bits_to_keep, **kwargs)


def patch_timm_augmentations() -> None:
    """Route timm's Posterize ops (by name, as its AugmentOp looks them up) through `posterize`."""
    for name, op in auto_augment.NAME_TO_OP.items():
        if op is _timm_posterize:
            auto_augment.NAME_TO_OP[name] = posterize
