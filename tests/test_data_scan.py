"""Dataset scanning: kohya folder layout, captions, bad files and the metadata numbers derived from a scan."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from lib_trainer.data.errors import DatasetError
from lib_trainer.data.scan import read_image_size, scan_dataset


def _image(path: Path, size=(80, 64), color=(200, 30, 30), **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, **save)
    return path


def _caption(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture()
def kohya_layout(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    _image(root / "10_sks dog" / "a.png")
    _caption(root / "10_sks dog" / "a.txt", "sks dog, Running, grass")
    _image(root / "10_sks dog" / "b.jpg", (64, 96))
    _caption(root / "10_sks dog" / "b.txt", "sks dog, sitting, grass")
    _image(root / "2_my_cat" / "c.webp", (100, 100))
    _caption(root / "2_my_cat" / "c.txt", "a cat")
    return root


def test_kohya_layout_repeats_class_tokens_and_sizes(kohya_layout: Path):
    scan = scan_dataset(kohya_layout)
    assert [(i.path.name, i.subset, i.repeats, i.class_tokens) for i in scan.items] == [
        ("a.png", "10_sks dog", 10, "sks dog"),
        ("b.jpg", "10_sks dog", 10, "sks dog"),
        ("c.webp", "2_my_cat", 2, "my_cat"),  # kohya keeps later underscores
    ]
    assert [(i.width, i.height) for i in scan.items] == [(80, 64), (64, 96), (100, 100)]
    assert scan.num_images == 3
    assert scan.num_train_images == 10 + 10 + 2
    assert scan.dataset_dirs() == {
        "10_sks dog": {"n_repeats": 10, "img_count": 2},
        "2_my_cat": {"n_repeats": 2, "img_count": 1},
    }
    assert scan.caption_coverage() == 1.0
    assert scan.warnings == []


def test_tag_frequency_is_per_folder_lowercased_and_stripped(kohya_layout: Path):
    freq = scan_dataset(kohya_layout).tag_frequency()
    assert freq == {
        "10_sks dog": {"sks dog": 2, "running": 1, "sitting": 1, "grass": 2},
        "2_my_cat": {"a cat": 1},
    }


def test_plain_folder_uses_one_repeat_and_trigger_word(tmp_path: Path):
    root = tmp_path / "plain"
    _image(root / "x.PNG")
    _image(root / "y.jpeg")
    _caption(root / "y.txt", "photo of sks")
    scan = scan_dataset(root, trigger_word="sks")
    assert [(i.path.name, i.repeats, i.class_tokens, i.subset) for i in scan.items] == [
        ("x.PNG", 1, "sks", "plain"),
        ("y.jpeg", 1, "sks", "plain"),
    ]
    assert scan.items[0].caption is None and scan.items[0].caption_source == "missing"
    assert scan.items[1].caption == "photo of sks" and scan.items[1].caption_source == "file"
    assert scan.caption_coverage() == 0.5
    # the missing caption falls back to the trigger word, so it still counts in the tag table
    assert scan.tag_frequency() == {"plain": {"sks": 1, "photo of sks": 1}}
    assert any("no caption file" in w and "x.PNG" in w for w in scan.warnings)


def test_hidden_entries_skipped_and_unnumbered_folder_warned(kohya_layout: Path):
    _image(kohya_layout / ".ipynb_checkpoints" / "a-checkpoint.png")
    _image(kohya_layout / ".lora-trainer-cache" / "junk.png")
    _image(kohya_layout / "10_sks dog" / ".hidden.png")
    _image(kohya_layout / "extra" / "d.png")
    scan = scan_dataset(kohya_layout)
    assert scan.num_images == 3
    assert all(not part.startswith(".") for i in scan.items for part in i.path.parts[-2:])
    ignored = [w for w in scan.warnings if "'extra' is ignored" in w]
    assert len(ignored) == 1 and "10_extra" in ignored[0]
    assert not any("ipynb" in w or "cache" in w for w in scan.warnings)


def test_non_image_files_get_one_warning(kohya_layout: Path):
    (kohya_layout / "10_sks dog" / "notes.md").write_text("hi")
    (kohya_layout / "10_sks dog" / "anim.gif").write_bytes(b"GIF89a")
    scan = scan_dataset(kohya_layout)
    skipped = [w for w in scan.warnings if w.startswith("skipped")]
    assert len(skipped) == 1
    assert "notes.md" in skipped[0] and "anim.gif" in skipped[0] and "PNG or JPEG" in skipped[0]


def test_wrong_caption_extension_is_hinted(tmp_path: Path):
    root = tmp_path / "ds"
    _image(root / "5_x" / "a.png")
    _caption(root / "5_x" / "a.caption", "tag")
    scan = scan_dataset(root, caption_extension=".txt")
    assert scan.items[0].caption is None
    assert any("caption_extension to '.caption'" in w for w in scan.warnings)
    scan = scan_dataset(root, caption_extension="caption")  # leading dot added
    assert scan.items[0].caption == "tag"


def test_caption_text_bom_and_multiline(tmp_path: Path):
    root = tmp_path / "ds"
    _image(root / "a.png")
    _caption(root / "a.txt", "\ufeffsks, red hat,\n\n  outdoors  \r\n")
    assert scan_dataset(root).items[0].caption == "sks, red hat, outdoors"


def test_empty_caption_counts_as_missing_with_warning(tmp_path: Path):
    root = tmp_path / "ds"
    _image(root / "3_thing" / "a.png")
    _caption(root / "3_thing" / "a.txt", "  \n")
    scan = scan_dataset(root)
    item = scan.items[0]
    assert item.caption is None and item.caption_source == "missing" and item.class_tokens == "thing"
    assert any("empty" in w and "a.txt" in w for w in scan.warnings)


def test_missing_caption_without_any_fallback_warns_about_empty_caption(tmp_path: Path):
    root = tmp_path / "ds"
    _image(root / "a.png")
    scan = scan_dataset(root)
    assert any("EMPTY caption" in w and "dataset.trigger_word" in w for w in scan.warnings)


def test_non_utf8_caption_error_names_file(tmp_path: Path):
    root = tmp_path / "ds"
    _image(root / "2_x" / "a.png")
    _caption(root / "2_x" / "a.txt", "caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(DatasetError) as err:
        scan_dataset(root)
    assert "a.txt" in str(err.value) and "UTF-8" in str(err.value)


def test_unreadable_image_error_names_file(tmp_path: Path):
    root = tmp_path / "ds"
    _image(root / "2_x" / "good.png")
    (root / "2_x" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(DatasetError) as err:
        scan_dataset(root)
    assert "broken.png" in str(err.value) and "re-save" in str(err.value)


def test_truncated_image_caught_only_by_full_decode(tmp_path: Path):
    root = tmp_path / "ds"
    path = _image(root / "a.jpg", (256, 256), quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert scan_dataset(root, check_images=False).items[0].width == 256  # header is intact
    with pytest.raises(DatasetError, match="a.jpg"):
        scan_dataset(root)


def test_exif_rotation_swaps_reported_size(tmp_path: Path):
    root = tmp_path / "ds"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    _image(root / "a.jpg", (120, 80), exif=exif)
    item = scan_dataset(root).items[0]
    assert (item.width, item.height) == (80, 120)


def test_small_images_warned_not_rejected(tmp_path: Path):
    root = tmp_path / "ds"
    _image(root / "tiny.png", (32, 100))
    scan = scan_dataset(root)
    assert scan.num_images == 1
    assert any("smaller than 64" in w and "tiny.png (32x100)" in w for w in scan.warnings)


def test_subfolders_inside_subset_are_not_scanned(kohya_layout: Path):
    _image(kohya_layout / "10_sks dog" / "more" / "e.png")
    scan = scan_dataset(kohya_layout)
    assert scan.num_images == 3
    assert any("not scanned" in w and "more" in w for w in scan.warnings)


def test_zero_repeats_folder_is_ignored_with_warning(kohya_layout: Path):
    _image(kohya_layout / "0_off" / "z.png")
    scan = scan_dataset(kohya_layout)
    assert scan.num_images == 3
    assert any("'0_off'" in w and "repeat count is 0" in w for w in scan.warnings)


def test_mixed_root_images_and_subsets_both_used(kohya_layout: Path):
    _image(kohya_layout / "loose.png")
    scan = scan_dataset(kohya_layout)
    assert scan.num_images == 4
    assert scan.dataset_dirs()["ds"] == {"n_repeats": 1, "img_count": 1}
    assert any("directly in 'ds'" in w for w in scan.warnings)


def test_selecting_the_subset_folder_itself_warns(kohya_layout: Path):
    scan = scan_dataset(kohya_layout / "10_sks dog")
    assert {i.repeats for i in scan.items} == {1}
    assert any("parent" in w for w in scan.warnings)


def test_empty_dataset_explains_layout(tmp_path: Path):
    root = tmp_path / "ds"
    _image(root / "dog" / "a.png")  # images, but the folder has no repeat count
    (root / "readme.md").write_text("x")
    with pytest.raises(DatasetError) as err:
        scan_dataset(root)
    message = str(err.value)
    assert "no training images" in message and "10_mychar" in message and "'10_dog'" in message


@pytest.mark.parametrize("make", ["missing", "file"])
def test_bad_dataset_path(tmp_path: Path, make: str):
    target = tmp_path / "nope"
    if make == "file":
        target.write_text("x")
    with pytest.raises(DatasetError) as err:
        scan_dataset(target)
    assert err.value.field == "dataset.path" and str(target) in str(err.value)


def test_unusable_caption_extension(tmp_path: Path):
    _image(tmp_path / "ds" / "a.png")
    for bad in ("", ".", ".png"):
        with pytest.raises(DatasetError) as err:
            scan_dataset(tmp_path / "ds", caption_extension=bad)
        assert err.value.field == "dataset.caption_extension"


def test_header_only_size_of_png_reads_exif_rotation_without_decoding(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    Image.new("RGB", (300, 200)).save(tmp_path / "r.png", exif=exif.tobytes())
    Image.new("RGB", (300, 200)).save(tmp_path / "n.png")
    for name, size in (("r.png", (200, 300)), ("n.png", (300, 200))):
        assert read_image_size(tmp_path / name, full_decode=False) == size
        assert read_image_size(tmp_path / name, full_decode=True) == size
