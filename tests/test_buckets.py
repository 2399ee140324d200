"""Aspect-ratio bucketing against values worked out by hand from kohya's rules, plus image loading/cropping.

Expected values are literals derived on paper from kohya's algorithm (model_util.make_bucket_resolutions,
BucketManager.select_bucket); they are not produced by calling the code under test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lib_trainer.data.buckets import (
    BucketManager,
    crop_ltrb,
    crop_top_left,
    format_bucket_summary,
    make_batches,
    make_bucket_resolutions,
    validate_bucket_settings,
)
from lib_trainer.data.errors import DatasetError
from lib_trainer.data.images import load_training_image

SD1_512_BUCKETS = [
    (256, 832), (256, 896), (256, 960), (256, 1024), (320, 704), (320, 768), (384, 640), (448, 576),
    (512, 512),
    (576, 448), (640, 384), (704, 320), (768, 320), (832, 256), (896, 256), (960, 256), (1024, 256),
]  # fmt: skip


def test_sd1_512_bucket_list_is_kohyas_17():
    assert make_bucket_resolutions((512, 512), 256, 1024, 64) == SD1_512_BUCKETS


def test_sdxl_bucket_lists():
    # 1024^2, 256-2048 step 64: kohya gives 41 buckets (count from the kohya catalogue)
    resos = make_bucket_resolutions((1024, 1024), 256, 2048, 64)
    assert len(resos) == 41
    assert {(832, 1216), (896, 1152), (1216, 832), (256, 2048), (2048, 256)} <= set(resos)
    resos32 = make_bucket_resolutions((1024, 1024), 256, 2048, 32)
    assert {(1344, 768), (768, 1344), (1312, 768), (1248, 832), (832, 1216), (544, 1920)} <= set(resos32)
    assert all(w * h <= 1024 * 1024 for w, h in resos32)
    assert all(w % 32 == 0 and h % 32 == 0 for w, h in resos32)


# (image w, h) -> (bucket, resized)  for resolution 512, min 256, max 1024, step 64
SD1_TABLE = [
    ((512, 512), (512, 512), (512, 512)),  # exact bucket
    ((1024, 1024), (512, 512), (512, 512)),
    ((768, 512), (640, 384), (640, 427)),  # AR 1.5: 1.667 beats 1.286; width matched, 512*640/768=426.7
    ((512, 768), (384, 640), (427, 640)),  # AR 0.667 > 0.6, so height matched
    ((1920, 1080), (640, 384), (683, 384)),  # height matched: 1920*384/1080=682.7
    ((1000, 3000), (256, 832), (277, 832)),  # AR 0.333 nearest 0.3077
    ((640, 384), (640, 384), (640, 384)),  # exact bucket, no resize
    ((300, 200), (640, 384), (640, 427)),  # upscaled to cover
    ((4000, 500), (1024, 256), (2048, 256)),  # AR 8: widest bucket, height matched
]

# resolution 1024, min 256, max 2048, step 32 (SDXL)
SDXL_TABLE = [
    ((1024, 1024), (1024, 1024), (1024, 1024)),
    ((832, 1216), (832, 1216), (832, 1216)),  # exact bucket
    ((1920, 1080), (1344, 768), (1365, 768)),  # AR 1.778: 1.75 beats 1.870; 1920*768/1080=1365.3
    ((1080, 1920), (768, 1344), (768, 1365)),
    ((3000, 2000), (1248, 832), (1248, 832)),  # AR 1.5 exactly matches 1248x832
    ((512, 512), (1024, 1024), (1024, 1024)),
    ((1000, 600), (1312, 768), (1312, 787)),  # AR 1.667: 1.708 beats 1.6; 600*1.312=787.2
]


@pytest.mark.parametrize(("size", "bucket", "resized"), SD1_TABLE)
def test_sd1_512_assignment(size, bucket, resized):
    choice = BucketManager(512, 256, 1024, 64).select_bucket(*size)
    assert (choice.bucket, choice.resized) == (bucket, resized)
    assert choice.ar_error == pytest.approx(bucket[0] / bucket[1] - size[0] / size[1])


@pytest.mark.parametrize(("size", "bucket", "resized"), SDXL_TABLE)
def test_sdxl_1024_assignment(size, bucket, resized):
    choice = BucketManager((1024, 1024), 256, 2048, 32).select_bucket(*size)
    assert (choice.bucket, choice.resized) == (bucket, resized)


# no_upscale, resolution 512 (max area 262144), step 64
NO_UPSCALE_TABLE = [
    ((300, 200), (256, 192), (300, 200)),  # under the area: kept as is, bucket floored to the step
    ((100, 600), (64, 576), (100, 600)),
    ((512, 512), (512, 512), (512, 512)),
    ((1024, 768), (512, 384), (512, 384)),  # height rounding keeps AR exactly (512/384 = 4/3)
    ((2000, 1000), (640, 320), (640, 320)),  # height rounding: 640/320 = 2 (width rounding gives 704/320)
    ((1000, 3000), (256, 768), (256, 768)),  # width rounding wins: 256/768 = 1/3
]


@pytest.mark.parametrize(("size", "bucket", "resized"), NO_UPSCALE_TABLE)
def test_no_upscale(size, bucket, resized):
    choice = BucketManager(512, 256, 1024, 64, no_upscale=True).select_bucket(*size)
    assert (choice.bucket, choice.resized) == (bucket, resized)
    assert choice.resized[0] <= size[0] and choice.resized[1] <= size[1]


def test_no_upscale_image_smaller_than_a_step_is_a_clear_error():
    with pytest.raises(DatasetError) as err:
        BucketManager(512, 256, 1024, 64, no_upscale=True).select_bucket(40, 300)
    assert "40x300" in str(err.value) and "bucket_no_upscale" in str(err.value)


def test_fixed_mode_single_bucket_cover_and_crop():
    manager = BucketManager((512, 512), 512, 512, 64, False, fixed=True)
    assert manager.select_bucket(768, 512).bucket == (512, 512)
    assert manager.select_bucket(768, 512).resized == (768, 512)
    assert manager.select_bucket(300, 600).resized == (512, 1024)


def test_min_max_snapped_like_kohya():
    assert validate_bucket_settings(512, 300, 1000, 64, 64) == (256, 1024)
    assert validate_bucket_settings((1024, 1024), 256, 2048, 32, 32) == (256, 2048)
    assert BucketManager(512, 300, 1000, 64).min_size == 256


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((512, 256, 1024, 48, 64), "dataset.bucket_reso_steps"),  # not a multiple of 64 (SD1)
        ((512, 256, 1024, 32, 64), "dataset.bucket_reso_steps"),  # SDXL step on an SD1 model
        ((512, 256, 1024, 0, 64), "dataset.bucket_reso_steps"),
        ((512, 640, 1024, 64, 64), "dataset.min_bucket_reso"),  # min above the resolution
        ((1024, 256, 768, 32, 32), "dataset.max_bucket_reso"),  # max below the resolution
        ((512, 1024, 256, 64, 64), "dataset.max_bucket_reso"),  # max < min
        ((0, 256, 1024, 64, 64), "training.resolution"),
    ],
)
def test_validation_errors_name_the_field(args, field):
    with pytest.raises(DatasetError) as err:
        validate_bucket_settings(*args)
    assert err.value.field == field
    assert str(err.value).startswith(field)


def test_sdxl_step_32_accepted():
    validate_bucket_settings(1024, 256, 2048, 32, 32)
    validate_bucket_settings(1024, 256, 2048, 64, 32)


def test_crop_helpers():
    assert crop_ltrb((683, 384), (640, 384)) == (21, 0, 661, 384)
    assert crop_top_left((683, 384), (640, 384)) == (0, 21)
    assert crop_top_left((640, 427), (640, 384)) == (21, 0)


def test_batches_stay_in_one_bucket_and_are_deterministic():
    assignments = {(512, 512): list(range(7)), (640, 384): [7, 8, 9]}
    batches = make_batches(assignments, 3, seed=11, epoch=0)
    assert sorted(len(b) for b in batches) == [1, 3, 3, 3]  # partial batch kept
    assert sorted(i for b in batches for i in b) == list(range(10))
    for batch in batches:
        assert set(batch) <= set(range(7)) or set(batch) <= {7, 8, 9}
    assert make_batches(assignments, 3, seed=11, epoch=0) == batches
    others = [make_batches(assignments, 3, seed=11, epoch=e) for e in range(1, 6)]
    assert any(o != batches for o in others)
    with pytest.raises(DatasetError):
        make_batches(assignments, 0, seed=1, epoch=0)


def test_bucket_summary_lists_buckets():
    text = format_bucket_summary({(640, 384): 5, (512, 512): 12}, mean_ar_error=0.0312)
    assert "512 x 512" in text and "640 x 384" in text and "17 image(s)" in text and "0.0312" in text
    assert text.index("512 x 512") < text.index("640 x 384")


# --- image loading -----------------------------------------------------------------------------------------


def _gradient(path: Path, width: int, height: int) -> Path:
    """Red channel = 2 * x, so columns can be identified after crop and flip."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[:, :, 0] = (np.arange(width) * 2).astype(np.uint8)[None, :]
    Image.fromarray(array).save(path)
    return path


def _to_byte(value: torch.Tensor) -> int:
    return round((float(value) + 1.0) * 127.5)


def test_load_crops_centre_and_mirrors_on_flip(tmp_path: Path):
    path = _gradient(tmp_path / "g.png", 97, 64)
    pixels, original, crop = load_training_image(path, (64, 64), (97, 64), flip=False)
    assert pixels.shape == (3, 64, 64) and pixels.dtype == torch.float32
    assert original == (64, 97) and crop == (0, 16)  # left = (97 - 64) // 2
    assert _to_byte(pixels[0, 0, 0]) == 2 * 16 and _to_byte(pixels[0, 0, 63]) == 2 * 79
    flipped, _, crop_f = load_training_image(path, (64, 64), (97, 64), flip=True)
    assert crop_f == (0, 97 - 80)  # kohya: left' = resized width - right
    assert _to_byte(flipped[0, 0, 0]) == 2 * 79 and _to_byte(flipped[0, 0, 63]) == 2 * 16


def test_load_resizes_and_stays_in_range(tmp_path: Path):
    path = _gradient(tmp_path / "g.png", 120, 80)
    down, _, crop = load_training_image(path, (64, 32), (64, 43), flip=False)
    assert down.shape == (3, 32, 64) and crop == (5, 0)
    up, _, _ = load_training_image(path, (256, 128), (256, 171), flip=False)  # Lanczos may overshoot; clipped
    for tensor in (down, up):
        assert tensor.min() >= -1.0 and tensor.max() <= 1.0


def test_load_composites_alpha_on_white(tmp_path: Path):
    path = tmp_path / "a.png"
    Image.new("RGBA", (64, 64), (10, 200, 10, 0)).save(path)
    pixels, _, _ = load_training_image(path, (64, 64), (64, 64), flip=False)
    assert torch.allclose(pixels, torch.ones_like(pixels))


def test_load_applies_exif_rotation(tmp_path: Path):
    path = tmp_path / "r.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (120, 80), (0, 0, 255)).save(path, exif=exif)
    pixels, original, _ = load_training_image(path, (64, 96), (64, 96), flip=False)
    assert original == (120, 80) and pixels.shape == (3, 96, 64)


def test_load_sixteen_bit_greyscale_is_not_clipped_to_white(tmp_path: Path):
    path = tmp_path / "g16.png"
    Image.fromarray(np.full((64, 64), 32896, dtype=np.uint16)).save(path)  # 32896 / 257 = 128
    pixels, _, _ = load_training_image(path, (64, 64), (64, 64), flip=False)
    assert _to_byte(pixels[0, 0, 0]) == 128


def test_load_broken_file_names_it(tmp_path: Path):
    path = tmp_path / "bad.png"
    path.write_bytes(b"nope")
    with pytest.raises(DatasetError, match="bad.png"):
        load_training_image(path, (64, 64), (64, 64), flip=False)
