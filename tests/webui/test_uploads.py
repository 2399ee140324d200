"""Dataset uploads: a good zip or item list becomes a new folder; anything unsafe (path escapes, links,
zip bombs, lying headers, non-images, clashing names) is refused with a clear message, the right HTTP
status, and nothing left behind in the datasets root."""

from __future__ import annotations

import base64
import io
import stat
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

import pytest
from PIL import Image

from lib_trainer.webui.uploads import (
    CAPTION_EXTENSIONS,
    IMAGE_EXTENSIONS,
    UploadError,
    UploadItem,
    UploadLimits,
    UploadSummary,
    new_dataset_dir,
    safe_relative_path,
    unpack_zip,
    write_items,
)

REPO = Path(__file__).resolve().parents[2]


def _image(fmt: str = "PNG", color: tuple[int, int, int] = (200, 40, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, fmt)
    return buf.getvalue()


def _zip(entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The datasets root; deliberately not created, the upload functions make it."""
    return tmp_path / "datasets"


def _rejected(call, root: Path, status: int = 400, *needles: str) -> UploadError:
    """Run an upload that must fail; check the status, the message, and that root holds nothing."""
    with pytest.raises(UploadError) as info:
        call()
    assert info.value.status == status, str(info.value)
    for needle in needles:
        assert needle in str(info.value)
    if root.exists():
        assert not any(p.name.startswith(".upload-") for p in root.iterdir())
        assert list(root.iterdir()) == []  # no dataset folder either
    return info.value


# --- zip uploads -------------------------------------------------------------------------------------


def test_good_zip_with_kohya_subfolder_captions_and_junk(root: Path) -> None:
    png, jpg = _image(), _image("JPEG")
    entries = [
        ("10_mychar/", b""),
        ("10_mychar/a.png", png),
        ("10_mychar/a.txt", b"mychar, smiling"),
        ("10_mychar/B.JPG", jpg),
        ("10_mychar/B.caption", b"mychar, outdoors"),
        ("c.bmp", _image("BMP")),
        ("__MACOSX/10_mychar/._a.png", b"\x00\x05\x16\x07junk"),
        (".DS_Store", b"junk"),
        ("10_mychar/Thumbs.db", b"junk"),
        ("desktop.ini", b"junk"),
    ]
    summary = unpack_zip(_zip(entries), root, "mychar set")

    assert isinstance(summary, UploadSummary)
    assert summary.path == root / "mychar set"
    assert (summary.images, summary.captions) == (3, 2)
    assert summary.bytes == len(png) + len(jpg) + len(_image("BMP")) + len(b"mychar, smiling") * 2 + 1
    assert sorted(summary.skipped) == sorted(
        ["10_mychar/", "__MACOSX/10_mychar/._a.png", ".DS_Store", "10_mychar/Thumbs.db", "desktop.ini"]
    )
    assert (summary.path / "10_mychar" / "a.png").read_bytes() == png
    assert (summary.path / "10_mychar" / "a.txt").read_text(encoding="utf-8") == "mychar, smiling"
    assert (summary.path / "10_mychar" / "B.JPG").read_bytes() == jpg
    assert (summary.path / "c.bmp").is_file()
    written = sorted(p.relative_to(summary.path).as_posix() for p in summary.path.rglob("*") if p.is_file())
    assert written == [
        "10_mychar/B.JPG",
        "10_mychar/B.caption",
        "10_mychar/a.png",
        "10_mychar/a.txt",
        "c.bmp",
    ]
    assert [p.name for p in root.iterdir()] == ["mychar set"]  # the temp folder is gone


def test_zip_from_a_stream(root: Path) -> None:
    summary = unpack_zip(io.BytesIO(_zip([("a.png", _image())])), root, "s")
    assert (summary.images, summary.captions, summary.skipped) == (1, 0, [])


@pytest.mark.parametrize(
    "bad",
    [
        "../x.png",
        "/etc/x.png",
        "C:\\x.png",
        "C:x.png",
        "a/../../x.png",
        "a\\..\\x.png",
        "//server/share/x.png",
        "\\\\server\\share\\x.png",
        "a/b/c/d/x.png",
        "a/con.png",
    ],
)
def test_zip_path_escapes_are_rejected(root: Path, bad: str) -> None:
    data = _zip([("ok.png", _image()), (bad, _image())])
    _rejected(lambda: unpack_zip(data, root, "set"), root, 400, repr(bad))


def test_zip_symlink_member_is_rejected(root: Path) -> None:
    link = zipfile.ZipInfo("10_x/link.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    data = _zip([("ok.png", _image()), (link, b"/etc/passwd")])
    _rejected(lambda: unpack_zip(data, root, "set"), root, 400, "10_x/link.png", "symbolic link")


def test_zip_encrypted_member_is_rejected(root: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ok.png", _image())
        zf.writestr(zipfile.ZipInfo("secret.png"), _image())
        zf.getinfo("secret.png").flag_bits |= 0x1  # lands in the central directory written on close
    assert zipfile.ZipFile(io.BytesIO(buf.getvalue())).getinfo("secret.png").flag_bits & 0x1
    _rejected(lambda: unpack_zip(buf.getvalue(), root, "set"), root, 400, "secret.png", "encrypted")


def test_zip_bomb_is_rejected_by_ratio(root: Path) -> None:
    data = _zip([("ok.png", _image()), ("bomb.png", bytes(20 * 1024 * 1024))])
    assert len(data) < 200_000
    limits = UploadLimits(max_ratio=100)
    _rejected(lambda: unpack_zip(data, root, "set", limits), root, 413, "bomb.png", "zip bomb")


def test_zip_member_over_max_file_bytes(root: Path) -> None:
    big = _image() + bytes(5000)  # still a readable PNG, just too big
    data = _zip([("ok.png", _image()), ("big.png", big)])
    limits = UploadLimits(max_file_bytes=1000)
    _rejected(lambda: unpack_zip(data, root, "set", limits), root, 413, "big.png")


def test_zip_over_max_total_bytes(root: Path) -> None:
    data = _zip([(f"{i}.png", _image(color=(i, i, i))) for i in range(4)])
    limits = UploadLimits(max_total_bytes=len(_image()) * 3)
    _rejected(lambda: unpack_zip(data, root, "set", limits), root, 413)


def test_zip_real_bytes_are_counted_not_the_headers(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A member that inflates to more than its header declares is stopped while extracting."""
    data = _zip([("a.png", _image()), ("b.png", b"x" * 10)])
    real_open = zipfile.ZipFile.open

    def lying_open(self, info, *args, **kwargs):
        name = info if isinstance(info, str) else info.filename
        return io.BytesIO(b"x" * 5000) if name == "b.png" else real_open(self, info, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", lying_open)
    _rejected(lambda: unpack_zip(data, root, "set", UploadLimits(max_file_bytes=1000)), root, 413, "b.png")


def test_zip_with_a_forged_smaller_size_is_rejected(root: Path) -> None:
    """Central directory says 10 bytes for a 5000-byte member: it never lands on disk."""
    payload = _image() + bytes(5000)
    data = bytearray(_zip([("ok.png", _image()), ("big.png", payload)]))
    central = data.rindex(b"PK\x01\x02")  # the last central directory entry is big.png's
    data[central + 24 : central + 28] = (10).to_bytes(4, "little")  # uncompressed size
    assert zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo("big.png").file_size == 10
    _rejected(lambda: unpack_zip(bytes(data), root, "set", UploadLimits(max_file_bytes=1000)), root, 400)


def test_zip_too_many_files(root: Path) -> None:
    data = _zip([("a.png", _image()), ("a.txt", b"cap"), ("b.png", _image())])
    _rejected(lambda: unpack_zip(data, root, "set", UploadLimits(max_files=2)), root, 413, "3 files")


def test_zip_disallowed_types_are_listed(root: Path) -> None:
    bad = ["run.exe", "tool.py", "notes.md", "a.json", "b.gif", "c.zip", "d.sh"]
    data = _zip([("ok.png", _image())] + [(name, b"x") for name in bad])
    error = _rejected(
        lambda: unpack_zip(data, root, "set"), root, 400, "'run.exe'", "'tool.py'", "and 2 more"
    )
    assert "'c.zip'" not in str(error)  # only the first five are named
    for ext in (*IMAGE_EXTENSIONS, *CAPTION_EXTENSIONS):
        assert ext in str(error)


@pytest.mark.parametrize(
    "entries",
    [
        [("a.txt", b"a caption"), ("__MACOSX/._a.png", b"junk")],
        [("__MACOSX/._a.png", b"junk"), ("folder/", b"")],
    ],
)
def test_zip_without_images(root: Path, entries: list[tuple[str, bytes]]) -> None:
    _rejected(lambda: unpack_zip(_zip(entries), root, "set"), root, 400, "no images", ".png")


@pytest.mark.parametrize("data", [b"hello, not a zip", b"", _zip([("a.png", _image())])[:40]])
def test_not_a_zip(root: Path, data: bytes) -> None:
    _rejected(lambda: unpack_zip(data, root, "set"), root, 400, "not a zip file")


def test_renamed_non_image_is_rejected_after_extraction(root: Path) -> None:
    data = _zip([("a.png", _image()), ("10_x/fake.png", b"this is text, not a PNG")])
    error = _rejected(
        lambda: unpack_zip(data, root, "set"), root, 400, "10_x/fake.png", "not a readable image"
    )
    assert ".upload-" not in str(error)  # no server paths in what goes back to the client


def test_truncated_image_is_rejected(root: Path) -> None:
    data = _zip([("a.png", _image()), ("cut.png", _image()[:30])])
    _rejected(lambda: unpack_zip(data, root, "set"), root, 400, "cut.png")


@pytest.mark.parametrize(
    "names",
    [["A.png", "a.PNG"], ["x/a.txt", "X/A.TXT", "x/a.png"], ["a.png", "./a.png"], ["a.png", "a.png/b.png"]],
)
def test_zip_duplicate_paths_ignoring_case(root: Path, names: list[str]) -> None:
    data = _zip([(name, _image()) for name in names])
    _rejected(lambda: unpack_zip(data, root, "set"), root, 400, "rename one")


# --- dataset folder names ----------------------------------------------------------------------------


def test_taken_dataset_name_gets_a_suffix(root: Path) -> None:
    data = _zip([("a.png", _image())])
    (root / "set").mkdir(parents=True)
    (root / "set" / "keep.txt").write_text("mine", encoding="utf-8")
    assert new_dataset_dir(root, "set") == root / "set_2"
    first = unpack_zip(data, root, "set")
    second = unpack_zip(data, root, "set")
    assert (first.path, second.path) == (root / "set_2", root / "set_3")
    assert [p.name for p in (root / "set").iterdir()] == ["keep.txt"]  # the existing folder is untouched
    assert not (root / "set_4").exists()  # new_dataset_dir only picks, never creates


@pytest.mark.parametrize("good", ["set", "My set-2.v1", "日本語_データ", "a" * 80])
def test_valid_dataset_names(root: Path, good: str) -> None:
    assert new_dataset_dir(root, good) == root / good


@pytest.mark.parametrize(
    "bad",
    [
        "",
        ".hidden",
        "..",
        "a/b",
        "a\\b",
        "a" * 81,
        "con",
        "Nul.set",
        "name.",
        " lead",
        "trail ",
        "a:b",
        "t\tab",
    ],
)
def test_invalid_dataset_names(root: Path, bad: str) -> None:
    with pytest.raises(UploadError, match="'name'") as info:
        new_dataset_dir(root, bad)
    assert info.value.status == 400
    data = _zip([("a.png", _image())])
    _rejected(lambda: unpack_zip(data, root, bad), root, 400, "'name'")
    _rejected(lambda: write_items([UploadItem("a.png", _b64(_image()))], root, bad), root, 400, "'name'")


# --- safe_relative_path ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.png", "a.png"),
        ("10_mychar\\img.png", "10_mychar/img.png"),
        ("./a/./b.png", "a/b.png"),
        ("a//b.png", "a/b.png"),
        ("a/b/c/d.png", "a/b/c/d.png"),
        ("console.png", "console.png"),
        ("COM10.png", "COM10.png"),
        ("my.con.png", "my.con.png"),
    ],
)
def test_safe_relative_path_accepts(name: str, expected: str) -> None:
    assert safe_relative_path(name) == PurePosixPath(expected)


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "/",
        "a\x00.png",
        "a\n.png",
        "..",
        "a/../b.png",
        "/x.png",
        "\\x.png",
        "C:\\x.png",
        "c:x.png",
        "//server/share/x.png",
        "a/b/c/d/e.png",
        "CON",
        "con.png",
        "x/Nul.txt",
        "COM1.jpg",
        "lpt9",
        "AUX .png",
        "a./b.png",
        "b.png ",
        "a.png:stream",
        "what?.png",
    ],
)
def test_safe_relative_path_rejects(name: str) -> None:
    with pytest.raises(UploadError) as info:
        safe_relative_path(name)
    assert info.value.status == 400
    assert repr(name) in str(info.value)


# --- base64 item uploads -----------------------------------------------------------------------------


def test_write_items_happy_path(root: Path) -> None:
    png, jpg = _image(), _image("JPEG")
    wrapped = "\n".join(_b64(jpg)[i : i + 60] for i in range(0, len(_b64(jpg)), 60))
    items = [
        UploadItem("10_mychar/a.png", "data:image/png;base64," + _b64(png), "mychar, smiling ✓"),
        UploadItem("b.jpg", wrapped),
        UploadItem("c.PNG", "  " + _b64(png) + "\n", ""),
    ]
    summary = write_items(items, root, "from api")
    assert summary.path == root / "from api"
    assert (summary.images, summary.captions, summary.skipped) == (3, 2, [])
    caption = "mychar, smiling ✓".encode()
    assert summary.bytes == 2 * len(png) + len(jpg) + len(caption)
    assert (summary.path / "10_mychar" / "a.png").read_bytes() == png
    assert (summary.path / "10_mychar" / "a.txt").read_bytes() == caption
    assert (summary.path / "b.jpg").read_bytes() == jpg
    assert not (summary.path / "b.txt").exists()
    assert (summary.path / "c.txt").read_text(encoding="utf-8") == ""
    assert [p.name for p in root.iterdir()] == ["from api"]


@pytest.mark.parametrize("data", ["not base64!!", "QUJ", "data:image/png;base64,@@@@", "ÄÖÜ="])
def test_write_items_invalid_base64(root: Path, data: str) -> None:
    items = [UploadItem("ok.png", _b64(_image())), UploadItem("bad.png", data)]
    _rejected(lambda: write_items(items, root, "set"), root, 400, "items[1]", "bad.png", "base64")


def test_write_items_non_image(root: Path) -> None:
    items = [UploadItem("ok.png", _b64(_image())), UploadItem("text.png", _b64(b"just some text"))]
    _rejected(
        lambda: write_items(items, root, "set"), root, 400, "items[1]", "text.png", "not a readable image"
    )


def test_write_items_caption_collision(root: Path) -> None:
    items = [UploadItem("a.png", _b64(_image()), "one"), UploadItem("a.jpg", _b64(_image("JPEG")), "two")]
    _rejected(lambda: write_items(items, root, "set"), root, 400, "items[0]", "items[1]", "a.txt")


def test_write_items_duplicate_names_ignoring_case(root: Path) -> None:
    items = [UploadItem("x/a.png", _b64(_image())), UploadItem("X/A.PNG", _b64(_image()))]
    _rejected(lambda: write_items(items, root, "set"), root, 400, "rename one")


@pytest.mark.parametrize("name", ["aux.png", "10_x/LPT1.jpg", "../a.png", "a.txt", "a.exe", "C:\\a.png"])
def test_write_items_bad_names(root: Path, name: str) -> None:
    items = [UploadItem("ok.png", _b64(_image())), UploadItem(name, _b64(_image()))]
    _rejected(lambda: write_items(items, root, "set"), root, 400)


def test_write_items_limits(root: Path) -> None:
    png = _b64(_image())
    two_files = [UploadItem("a.png", png, "caption")]
    _rejected(lambda: write_items(two_files, root, "s", UploadLimits(max_files=1)), root, 413)
    _rejected(lambda: write_items(two_files, root, "s", UploadLimits(max_file_bytes=10)), root, 413, "a.png")
    many = [UploadItem(f"{i}.png", png) for i in range(3)]
    _rejected(
        lambda: write_items(many, root, "s", UploadLimits(max_total_bytes=len(_image()) * 2)), root, 413
    )


def test_write_items_without_images(root: Path) -> None:
    _rejected(lambda: write_items([], root, "set"), root, 400, "no images")


def test_module_stays_torch_free() -> None:
    """The WebUI imports this module in its own process; it must not drag torch in."""
    code = "import sys, lib_trainer.webui.uploads; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
