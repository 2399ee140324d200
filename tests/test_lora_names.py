"""Free LoRA names in a WebUI LoRA tree: basenames are global across subfolders and case-insensitive."""

from __future__ import annotations

from lib_trainer.export.lora_names import family_of, lora_stems, name_taken, next_free_name


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_family_of():
    assert family_of("mychar-000003") == "mychar"
    assert family_of("mychar-step00000120") == "mychar"
    assert family_of("mychar-v2") == "mychar-v2"
    assert family_of("my-char") == "my-char"


def test_names_are_checked_in_every_subfolder_and_ignore_case(tmp_path):
    _touch(tmp_path / "a" / "b" / "Style.safetensors")
    _touch(tmp_path / "c" / "hero-000004.safetensors")
    _touch(tmp_path / "notes" / "free.txt")
    assert lora_stems(tmp_path) == {"style", "hero-000004"}
    assert name_taken(tmp_path, "style")
    assert name_taken(tmp_path, "HERO")  # an epoch file of the family is enough
    assert not name_taken(tmp_path, "free")
    assert name_taken(tmp_path, "notes")  # an existing folder would mix two families
    assert name_taken(tmp_path, "queued", reserved=["Queued"])
    assert next_free_name(tmp_path, "style") == "style_2"
    _touch(tmp_path / "style_2" / "style_2.safetensors")
    assert next_free_name(tmp_path, "style", reserved=["style_3"]) == "style_4"
    assert next_free_name(tmp_path / "missing", "x") == "x"


def test_symlink_loops_do_not_hang(tmp_path):
    _touch(tmp_path / "a" / "one.safetensors")
    (tmp_path / "a" / "loop").symlink_to(tmp_path, target_is_directory=True)
    assert lora_stems(tmp_path) == {"one"}
