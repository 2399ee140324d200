"""Atomic writes: a failure at any point leaves either the old file or nothing, never a partial file."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors import safe_open

from lib_trainer.export import safe_write
from lib_trainer.export.safe_write import (
    atomic_save_safetensors,
    atomic_write_bytes,
    atomic_write_json,
    temp_path_for,
    unique_path,
)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def tensors() -> dict[str, torch.Tensor]:
    return {"a.lora_down.weight": torch.ones(2, 3), "a.alpha": torch.tensor(1.0)}


def test_bytes_written_and_no_temp_left(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    assert atomic_write_bytes(target, b"hello") == target
    assert target.read_bytes() == b"hello"
    assert listing(target.parent) == ["file.bin"]
    assert temp_path_for(target).name == f".file.bin.tmp-{os.getpid()}"


def test_safetensors_roundtrip_with_metadata(tmp_path):
    target = tmp_path / "x.safetensors"
    atomic_save_safetensors(target, tensors(), {"ss_output_name": "x"})
    with safe_open(str(target), framework="pt") as f:
        assert f.metadata() == {"ss_output_name": "x"}
        assert torch.equal(f.get_tensor("a.lora_down.weight"), torch.ones(2, 3))
    assert listing(tmp_path) == ["x.safetensors"]


def test_exception_mid_write_leaves_nothing(tmp_path, monkeypatch):
    def half_then_fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial data")
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(safetensors.torch, "save_file", half_then_fail)
    with pytest.raises(RuntimeError, match="simulated crash"):
        atomic_save_safetensors(tmp_path / "x.safetensors", tensors(), {})
    assert listing(tmp_path) == []


def test_interrupt_mid_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "x.safetensors"
    target.write_bytes(b"old")

    def interrupted(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"new but incomplete")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_save_safetensors(target, tensors(), {}, overwrite=True)
    assert target.read_bytes() == b"old"
    assert listing(tmp_path) == ["x.safetensors"]


def test_disk_full_is_a_clear_message_and_cleans_up(tmp_path, monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safe_write.os, "fsync", no_space)
    with pytest.raises(OSError, match="No space left on device.*free disk space") as info:
        atomic_write_bytes(tmp_path / "f.json", b"{}")
    assert info.value.errno == errno.ENOSPC
    assert listing(tmp_path) == []


def test_refuses_to_overwrite_unless_asked(tmp_path):
    target = tmp_path / "x.json"
    target.write_text("keep")
    with pytest.raises(FileExistsError, match="will not be overwritten"):
        atomic_write_bytes(target, b"new", overwrite=False)
    with pytest.raises(FileExistsError, match="will not be overwritten"):
        atomic_save_safetensors(target, tensors(), None, overwrite=False)
    assert target.read_text() == "keep"
    atomic_write_bytes(target, b"new", overwrite=True)
    assert target.read_bytes() == b"new"
    assert listing(tmp_path) == ["x.json"]


def test_file_appearing_during_the_write_is_not_overwritten(tmp_path):
    target = tmp_path / "race.bin"

    def writer(tmp: Path) -> None:
        tmp.write_bytes(b"ours")
        target.write_bytes(b"someone else's")  # another process wins the name meanwhile

    with pytest.raises(FileExistsError):
        safe_write.write_atomically(target, writer, overwrite=False)
    assert target.read_bytes() == b"someone else's"
    assert listing(tmp_path) == ["race.bin"]


def test_without_hard_links_still_refuses_existing_names(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(safe_write.os, "link", no_links)
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"one", overwrite=False)
    assert target.read_bytes() == b"one"
    with pytest.raises(FileExistsError):
        atomic_write_bytes(target, b"two", overwrite=False)
    assert listing(tmp_path) == ["f.bin"]


def test_folder_in_the_way_and_bad_metadata_are_clear(tmp_path):
    (tmp_path / "d.bin").mkdir()
    with pytest.raises(IsADirectoryError, match="a folder with that name"):
        atomic_write_bytes(tmp_path / "d.bin", b"x")
    with pytest.raises(TypeError, match="'ss_network_dim' has a value of type int"):
        atomic_save_safetensors(tmp_path / "m.safetensors", tensors(), {"ss_network_dim": 4})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="no tensors"):
        atomic_save_safetensors(tmp_path / "m.safetensors", {}, {})
    assert listing(tmp_path) == ["d.bin"]


def test_json_is_utf8_and_converts_paths(tmp_path):
    target = tmp_path / "card.json"
    atomic_write_json(target, {"activation text": "ねこ", "path": Path("a/b"), "set": {1}})
    text = target.read_text(encoding="utf-8")
    assert "ねこ" in text
    assert json.loads(text) == {"activation text": "ねこ", "path": "a/b", "set": [1]}
    with pytest.raises(TypeError, match="cannot store a value of type object in JSON"):
        atomic_write_json(tmp_path / "bad.json", {"x": object()})
    assert listing(tmp_path) == ["card.json"]


def test_unique_path_never_returns_an_existing_name(tmp_path):
    assert unique_path(tmp_path, "mylora", ".safetensors") == tmp_path / "mylora.safetensors"
    (tmp_path / "mylora.safetensors").write_bytes(b"")
    assert unique_path(tmp_path, "mylora", ".safetensors") == tmp_path / "mylora-2.safetensors"
    (tmp_path / "mylora-2.safetensors").write_bytes(b"")
    (tmp_path / "MyLora-3.safetensors").write_bytes(b"")  # differs only by case: still taken
    assert unique_path(tmp_path, "mylora", "safetensors") == tmp_path / "mylora-4.safetensors"
    assert unique_path(tmp_path / "not-yet", "x", ".json") == tmp_path / "not-yet" / "x.json"


@pytest.mark.parametrize("stem", ["", "  ", "a/b", "a\\b", "what?", "c:d", "trailing.", " lead"])
def test_unique_path_rejects_unusable_names(tmp_path, stem):
    with pytest.raises(ValueError, match="output name"):
        unique_path(tmp_path, stem, ".safetensors")
