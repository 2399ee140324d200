"""Load one training image as the VAE expects it: bucket-sized, RGB, CHW float in [-1, 1].

Matches kohya's preprocessing (area filter when shrinking, Lanczos when enlarging, centred crop, mirrored
crop coordinates on flip) so a LoRA trained here sees the same pixels as one trained there.
"""

from __future__ import annotations

import warnings as _warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .buckets import Size, crop_ltrb
from .errors import DatasetError

_WHITE = (255, 255, 255)


def load_training_image(
    path: Path, bucket: Size, resized: Size, flip: bool
) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """Returns (pixels [3, bucket_h, bucket_w] float32 in [-1, 1], original (h, w), crop (top, left)).

    `original` is after EXIF rotation; the crop is in resized pixels and, when flipped, measured from the
    mirrored side (kohya: left' = resized width - right), which is what SDXL's crop conditioning wants.
    """
    image = open_rgb(path)
    original_hw = (image.height, image.width)
    if image.size != tuple(resized):
        image = resize(image, resized)
    left, top, right, bottom = crop_ltrb(image.size, bucket)
    image = image.crop((left, top, right, bottom))
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        left = resized[0] - right
    array = np.asarray(image, dtype=np.uint8)
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
    return tensor.contiguous(), original_hw, (top, left)


def open_rgb(path: Path) -> Image.Image:
    """Decode, apply EXIF rotation and flatten to 8-bit RGB (transparent areas become white)."""
    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                image = ImageOps.exif_transpose(img)
                return to_rgb(image)
    except DatasetError:
        raise
    except Exception as exc:  # any decoder failure means the same to the user
        raise DatasetError(
            f"{path} could not be read as an image: {exc}. Remove it or re-save it as PNG/JPEG in an image editor."
        ) from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB; alpha is composited on white (as most hobbyist cut-outs assume), 16-bit is scaled down."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = _high_depth_to_l(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def resize(image: Image.Image, size: Size) -> Image.Image:
    """Area averaging (PIL BOX) when shrinking on both sides, Lanczos otherwise: kohya's defaults."""
    shrinking = image.width >= size[0] and image.height >= size[1]
    method = Image.Resampling.BOX if shrinking else Image.Resampling.LANCZOS
    return image.resize((int(size[0]), int(size[1])), method)


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """Greyscale 16/32-bit (PIL would clip these to white when converting) mapped to 8 bits."""
    values = np.asarray(image, dtype=np.float64)
    peak = float(values.max()) if values.size else 0.0
    if image.mode == "F" and peak <= 1.0:
        values = values * 255.0
    elif peak > 255.0:
        values = values / 257.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
