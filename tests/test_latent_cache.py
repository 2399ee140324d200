"""Latent cache: content-addressed keys, memory/disk hits, and stale or broken disk entries being rebuilt."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from lib_trainer.data.errors import DatasetError
from lib_trainer.data.latent_cache import LatentCache

SHAPE = (8, 8, 8)  # [2C, h, w] for a 64x64 bucket with a 4-channel VAE
BUCKET = (64, 64)


@pytest.fixture()
def image(tmp_path: Path) -> Path:
    path = tmp_path / "img.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(path)
    return path


def _latents(seed: int = 0) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def _stored(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.iterdir())


def test_memory_only_miss_then_hit(image: Path):
    cache = LatentCache(None, "vae-a")
    key = cache.key_for(image, BUCKET, False)
    assert cache.get(key, SHAPE) is None
    tensor = _latents()
    cache.put(key, tensor, bucket=BUCKET)
    assert torch.equal(cache.get(key, SHAPE), tensor)
    assert cache.stats["memory_hits"] == 1 and cache.stats["misses"] == 1


def test_disk_entry_survives_a_new_run(tmp_path: Path, image: Path):
    disk = tmp_path / "cache"
    first = LatentCache(disk, "vae-a")
    key = first.key_for(image, BUCKET, False)
    tensor = _latents()
    first.put(key, tensor, bucket=BUCKET)
    assert [p.name for p in _stored(disk)] == [f"{key}.safetensors"]  # no temp files left behind

    second = LatentCache(disk, "vae-a")
    key2 = second.key_for(image, BUCKET, False)
    assert key2 == key
    assert torch.equal(second.get(key2, SHAPE), tensor)
    assert second.stats["disk_hits"] == 1
    second.get(key2, SHAPE)
    assert second.stats["memory_hits"] == 1


def test_key_depends_on_content_bucket_flip_and_vae_not_path(tmp_path: Path, image: Path):
    cache = LatentCache(None, "vae-a")
    base = cache.key_for(image, BUCKET, False)
    assert cache.key_for(image, (64, 128), False) != base
    assert cache.key_for(image, BUCKET, True) != base
    assert LatentCache(None, "vae-b").key_for(image, BUCKET, False) != base
    copy = tmp_path / "renamed.png"
    shutil.copy(image, copy)
    assert cache.key_for(copy, BUCKET, False) == base  # same bytes, same latents

    Image.new("RGB", (64, 64), (9, 9, 9)).save(image)  # edited in place
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert cache.key_for(image, BUCKET, False) != base


def test_file_hash_is_memoised(image: Path, monkeypatch):
    cache = LatentCache(None, "vae-a")
    cache.key_for(image, BUCKET, False)
    opened = []
    original_open = Path.open

    def spy(self, *args, **kwargs):
        opened.append(self)
        return original_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", spy)
    cache.key_for(image, BUCKET, True)
    cache.key_for(image, (128, 64), False)
    assert opened == []


def _write_entry(cache: LatentCache, key: str, tensor: torch.Tensor, metadata_changes=None) -> Path:
    path = cache.path_for(key)
    metadata = cache._metadata(key, tuple(tensor.shape), BUCKET)
    metadata.update(metadata_changes or {})
    save_file({"latents": tensor.contiguous()}, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(
    "changes",
    [
        {"vae_id": "some-other-vae"},
        {"bucket": "64x128"},
        {"shape": "8x8x9"},
        {"dtype": "float16"},
        {"key": "x"},
    ],
)
def test_stale_metadata_is_deleted_and_rebuilt(tmp_path: Path, image: Path, changes):
    disk = tmp_path / "cache"
    disk.mkdir()
    cache = LatentCache(disk, "vae-a")
    key = cache.key_for(image, BUCKET, False)
    path = _write_entry(cache, key, _latents(), changes)
    assert cache.get(key, SHAPE) is None
    assert not path.exists()
    assert cache.stats["discarded"] == 1
    fresh = _latents(1)
    cache.put(key, fresh, bucket=BUCKET)
    assert torch.equal(LatentCache(disk, "vae-a").get(key, SHAPE), fresh)


def test_wrong_shape_on_disk_is_rebuilt(tmp_path: Path, image: Path):
    disk = tmp_path / "cache"
    cache = LatentCache(disk, "vae-a")
    key = cache.key_for(image, BUCKET, False)
    cache.put(key, _latents(), bucket=BUCKET)
    other_run = LatentCache(disk, "vae-a")  # e.g. a VAE with a different channel count
    other_run.key_for(image, BUCKET, False)
    assert other_run.get(key, (32, 8, 8)) is None
    assert not cache.path_for(key).exists()
    assert cache.get(key, (32, 8, 8)) is None  # the memory copy is checked too


def test_tensor_that_disagrees_with_its_metadata_is_rebuilt(tmp_path: Path, image: Path):
    disk = tmp_path / "cache"
    disk.mkdir()
    cache = LatentCache(disk, "vae-a")
    key = cache.key_for(image, BUCKET, False)
    path = cache.path_for(key)
    metadata = cache._metadata(key, SHAPE, BUCKET)  # claims SHAPE, holds something else
    save_file({"latents": torch.zeros(4, 8, 8)}, str(path), metadata=metadata)
    assert cache.get(key, SHAPE) is None and not path.exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "nan"])
def test_corrupted_file_is_rebuilt(tmp_path: Path, image: Path, damage: str):
    disk = tmp_path / "cache"
    cache = LatentCache(disk, "vae-a")
    key = cache.key_for(image, BUCKET, False)
    cache.put(key, _latents(), bucket=BUCKET)
    path = cache.path_for(key)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) - 100])
    elif damage == "garbage":
        path.write_bytes(b"\xff" * 64)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        _write_entry(cache, key, torch.full(SHAPE, float("nan")))
    reader = LatentCache(disk, "vae-a")
    reader.key_for(image, BUCKET, False)
    assert reader.get(key, SHAPE) is None
    assert not path.exists()
    reader.put(key, _latents(2), bucket=BUCKET)
    assert torch.equal(LatentCache(disk, "vae-a").get(key, SHAPE), _latents(2))


def test_unwritable_disk_falls_back_to_memory(tmp_path: Path, image: Path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    cache = LatentCache(blocker / "cache", "vae-a")
    key = cache.key_for(image, BUCKET, False)
    cache.put(key, _latents(), bucket=BUCKET)
    assert cache.disk_dir is None and cache.warnings and "in-memory" in cache.warnings[0]
    assert torch.equal(cache.get(key, SHAPE), _latents())


def test_missing_image_is_a_dataset_error(tmp_path: Path):
    with pytest.raises(DatasetError, match="gone.png"):
        LatentCache(None, "vae-a").key_for(tmp_path / "gone.png", BUCKET, False)
