"""The live dataset summary: exact numbers on a small kohya-style folder, agreement with the trainer's
bucket rules, friendly problems instead of exceptions, and escaped HTML."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from lib_trainer.data.buckets import BucketManager
from lib_trainer.webui.dataset_summary import (
    EMPTY_PATH_PROBLEM,
    DatasetSummary,
    render_summary_html,
    summarize_dataset,
)

REPO = Path(__file__).resolve().parents[2]


def _image(path: Path, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 80, 40)).save(path)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Root images (1 repeat) plus a `3_mychar` subset; two captions missing, one empty."""
    root = tmp_path / "data"
    _image(root / "a.png", (512, 768))
    (root / "a.txt").write_text("mychar, smiling", encoding="utf-8")
    _image(root / "b.jpg", (768, 512))  # no caption
    _image(root / "c.png", (512, 512))
    (root / "c.txt").write_text("   \n", encoding="utf-8")  # empty caption
    sub = root / "3_mychar"
    _image(sub / "d.png", (1024, 1536))
    (sub / "d.txt").write_text("a photo of mychar", encoding="utf-8")
    _image(sub / "e.webp", (200, 200))  # small: enlarged 2.56x
    (sub / "e.txt").write_text("mychar", encoding="utf-8")
    _image(sub / "f.png", (640, 640))  # no caption; trains with the class tokens "mychar"
    return root


def _expected_buckets(root: Path, manager: BucketManager) -> list[tuple[int, int, int]]:
    counts: dict[tuple[int, int], int] = {}
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".png", ".jpg", ".webp")):
        with Image.open(path) as img:
            bucket = manager.select_bucket(*img.size).bucket
        counts[bucket] = counts.get(bucket, 0) + 1
    return sorted(((w, h, n) for (w, h), n in counts.items()), key=lambda b: (-b[2], b[0], b[1]))


def test_numbers(dataset: Path) -> None:
    s = summarize_dataset(str(dataset))
    assert s.ok, s.problems
    assert s.folder == str(dataset)
    assert s.image_count == 6
    assert s.train_images == 3 + 3 * 3
    assert sorted(s.subsets) == [("3_mychar", 3, 3), ("data", 1, 3)]
    assert s.captioned == 3
    assert s.caption_coverage == pytest.approx(0.5)
    assert s.missing_captions == ["b.jpg", "3_mychar/f.png"]  # the scan's order
    assert s.empty_captions == ["c.png"]
    assert sum(n for _, _, n in s.buckets) == 6
    assert [b[2] for b in s.buckets] == sorted((b[2] for b in s.buckets), reverse=True)
    assert s.problems == []
    assert any("less than half the size" in w and "3_mychar/e.webp" in w for w in s.warnings)
    assert any("no caption file" in w for w in s.warnings)  # the scan's own warning is passed on
    assert s.elapsed_s >= 0


def test_buckets_agree_with_bucket_manager(dataset: Path) -> None:
    s = summarize_dataset(str(dataset), resolution=512)
    assert s.buckets == _expected_buckets(dataset, BucketManager((512, 512), 256, 1024, 64))
    s = summarize_dataset(str(dataset), resolution=(512, 768), max_bucket_reso=1280, bucket_no_upscale=True)
    assert s.ok, s.problems
    assert s.buckets == _expected_buckets(dataset, BucketManager((512, 768), 256, 1280, 64, True))
    s = summarize_dataset(str(dataset), resolution=1024, model_type="sdxl")
    assert s.buckets == _expected_buckets(dataset, BucketManager((1024, 1024), 256, 2048, 32))
    s = summarize_dataset(str(dataset), resolution=512, enable_bucket=False)
    assert s.buckets == [(512, 512, 6)]


def test_sdxl_guessed_from_resolution(dataset: Path) -> None:
    guessed = summarize_dataset(str(dataset), resolution=1024)
    assert guessed.buckets == summarize_dataset(str(dataset), resolution=1024, model_type="sdxl").buckets
    # 32 px steps are fine for SDXL but not for an SD1 model, just as in training
    assert summarize_dataset(str(dataset), resolution=1024, bucket_reso_steps=32).ok
    sd1 = summarize_dataset(str(dataset), resolution=1024, bucket_reso_steps=32, model_type="sd1")
    assert not sd1.ok and "dataset.bucket_reso_steps" in sd1.problems[0]


def test_trigger_word_warning(dataset: Path) -> None:
    s = summarize_dataset(str(dataset), trigger_word="mychar")
    assert not any("The trigger word" in w for w in s.warnings)
    s = summarize_dataset(str(dataset), trigger_word="sks")
    (warning,) = [w for w in s.warnings if "trigger word 'sks'" in w]
    assert "4 of 6" in warning  # c.png (empty caption, no class tokens) falls back to the trigger word
    s = summarize_dataset(str(dataset), trigger_word="sks", prepend_trigger_word=True)
    assert not any("The trigger word" in w for w in s.warnings)


def test_many_enlarged_warning(tmp_path: Path) -> None:
    for i in range(3):
        _image(tmp_path / f"{i}.png", (400, 400))
    s = summarize_dataset(str(tmp_path))
    assert any("will be enlarged" in w for w in s.warnings)
    s = summarize_dataset(str(tmp_path), bucket_no_upscale=True)
    assert not any("will be enlarged" in w for w in s.warnings)
    assert s.buckets == [(384, 384, 3)]


@pytest.mark.parametrize("path", ["", "   ", '""', None])
def test_empty_path(path) -> None:
    s = summarize_dataset(path)
    assert not s.ok
    assert s.problems == [EMPTY_PATH_PROBLEM]
    assert s.image_count == 0


def test_missing_and_wrong_folders(tmp_path: Path) -> None:
    s = summarize_dataset(str(tmp_path / "nope"))
    assert not s.ok and "not found" in s.problems[0]
    file = tmp_path / "x.png"
    _image(file, (64, 64))
    s = summarize_dataset(str(file))
    assert not s.ok and "not a folder" in s.problems[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    s = summarize_dataset(f'"{empty}"')  # quotes from "Copy as path" are removed
    assert s.folder == str(empty)
    assert not s.ok and "No training images found" in s.problems[0]


def test_unreadable_image(dataset: Path) -> None:
    (dataset / "broken.png").write_bytes(b"this is not a png")
    s = summarize_dataset(str(dataset))
    assert not s.ok
    assert len(s.problems) == 1 and "broken.png" in s.problems[0] and "could not be read" in s.problems[0]


def test_bad_caption_encoding(dataset: Path) -> None:
    (dataset / "b.txt").write_bytes(b"caf\xe9")
    s = summarize_dataset(str(dataset))
    assert not s.ok and "b.txt" in s.problems[0] and "UTF-8" in s.problems[0]


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"min_bucket_reso": 1024}, "dataset.min_bucket_reso"),
        ({"min_bucket_reso": 512, "max_bucket_reso": 384}, "dataset.min_bucket_reso"),
        ({"max_bucket_reso": 100}, "dataset.max_bucket_reso"),
        ({"bucket_reso_steps": 96}, "dataset.bucket_reso_steps"),
        ({"resolution": 500}, "training.resolution"),
        ({"resolution": "big"}, "training.resolution"),
        ({"min_bucket_reso": None}, "dataset.min_bucket_reso"),
        ({"caption_extension": "png"}, "dataset.caption_extension"),
    ],
)
def test_bad_settings_are_problems(dataset: Path, settings: dict, field: str) -> None:
    s = summarize_dataset(str(dataset), **settings)
    assert not s.ok
    assert any(p.startswith(field) for p in s.problems), s.problems


def test_whole_floats_from_number_boxes(dataset: Path) -> None:
    a = summarize_dataset(str(dataset), resolution=512.0, min_bucket_reso=256.0, max_bucket_reso=1024.0)
    assert a.ok and a.buckets == summarize_dataset(str(dataset)).buckets


def test_html(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _image(root / "<b>x.png", (512, 512))
    _image(root / "y.png", (512, 768))
    (root / "y.txt").write_text("y", encoding="utf-8")
    s = summarize_dataset(str(root))
    page = render_summary_html(s)
    assert page.startswith('<div class="lora-trainer-dataset-summary" data-ok="true">')
    assert "<b>" not in page and "&lt;b&gt;x.png" in page
    assert "2 images · 1/2 captioned · 2 buckets" in page
    assert "384×640 ×1, 512×512 ×1" in page  # 512×768 is larger than 512×512 in area
    assert '<ul class="lora-trainer-warnings">' in page
    assert "lora-trainer-problems" not in page

    bad = render_summary_html(DatasetSummary(folder="x", problems=["<script>alert(1)</script>"]))
    assert 'data-ok="false"' in bad
    assert '<ul class="lora-trainer-problems"><li>&lt;script&gt;' in bad


def test_html_repeats_and_plurals(dataset: Path) -> None:
    page = render_summary_html(summarize_dataset(str(dataset)))
    assert "6 images (12 with repeats) · 3/6 captioned" in page
    assert "3_mychar: 3 images × 3" in page
    one = DatasetSummary(folder="x", ok=True, image_count=1, train_images=1, buckets=[(512, 512, 1)])
    assert "1 image · 0/1 captioned · 1 bucket<" in render_summary_html(one)


def test_many_images_finish(tmp_path: Path) -> None:
    for i in range(300):
        _image(tmp_path / f"{i:03d}.png", (96 + i % 5 * 8, 128))
    s = summarize_dataset(str(tmp_path), resolution=128, min_bucket_reso=64, max_bucket_reso=256)
    assert s.ok and s.image_count == 300
    assert sum(n for _, _, n in s.buckets) == 300


def test_webui_modules_do_not_import_torch() -> None:
    code = (
        "import sys, lib_trainer.webui.presets, lib_trainer.webui.dataset_summary; "
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'peft', 'safetensors') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
