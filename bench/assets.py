"""What a benchmark trains on: random-weight checkpoints, a synthetic dataset, and kohya's tokenizer folder.

Weights and pixels do not change the speed of a step, only shapes do, so everything is generated: nothing
is downloaded, and the GPU machine (which reaches no network) can run it. Everything is made once per
work folder and reused; a file is written under a temporary name and renamed, so a stopped run never
leaves a half file that a later run would trust.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageDraw

DATASET_IMAGES = 32
SUBSET = "1_bench"  # kohya's <repeats>_<name> folder; our trainer reads the same convention
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "black", "white")
SHAPES = ("circle", "square", "triangle", "star")

# kohya's --tokenizer_cache_dir layout: one folder per hub id, "/" replaced by "_" (library/strategy_base.py)
KOHYA_TOKENIZERS = {
    "openai_clip-vit-large-patch14": False,  # pads with the end token
    "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k": True,  # SDXL's second encoder pads with "!"
}


def checkpoint_path(workdir: Path, arch: str, size: str) -> Path:
    return Path(workdir) / "models" / f"random-{arch}-{size}-fp16.safetensors"


def ensure_checkpoint(workdir: Path, arch: str, size: str, python: list[str] | None = None) -> Path:
    """A random checkpoint in the real single-file layout (fp16, as checkpoints are shipped).

    Written by a child process: a full-size SDXL is built in fp32 first (about 14 GB), which would otherwise
    stay in this process's memory while the trainers run."""
    path = checkpoint_path(workdir, arch, size)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    code = (
        "import sys, torch\n"
        "from lib_trainer.models.tiny import write_random_checkpoint\n"
        "write_random_checkpoint(sys.argv[1], sys.argv[2], size=sys.argv[3], dtype=torch.float16)\n"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([*(python or [sys.executable]), "-c", code, str(path), arch, size], check=True, cwd=root)
    return path


def _caption(rng: random.Random) -> str:
    colour, shape, bg = rng.choice(COLOURS), rng.choice(SHAPES), rng.choice(COLOURS)
    tags = [f"a {colour} {shape}", f"{bg} background", "simple shapes", "flat colours", "centered"]
    return "bench, " + ", ".join(tags[: rng.randint(2, len(tags))])


def _image(rng: random.Random, size: int) -> Image.Image:
    """Smooth shapes on a gradient: cheap to encode as PNG (noise would be ~3 MB per 1024 px image)."""
    top = tuple(rng.randint(0, 255) for _ in range(3))
    bottom = tuple(rng.randint(0, 255) for _ in range(3))
    img = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(img)
    for y in range(size):
        f = y / max(1, size - 1)
        draw.line(
            [(0, y), (size, y)], fill=tuple(int(a + (b - a) * f) for a, b in zip(top, bottom, strict=True))
        )
    for _ in range(rng.randint(2, 5)):
        r = rng.randint(size // 10, size // 3)
        cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
        fill = tuple(rng.randint(0, 255) for _ in range(3))
        if rng.random() < 0.5:
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    return img


def ensure_dataset(workdir: Path, resolution: int, count: int = DATASET_IMAGES, seed: int = 0) -> Path:
    """`count` square images at the training resolution with .txt captions, in `<root>/1_bench/`.

    Square images at exactly the training size make bucketing a no-op for both trainers. Returns the root
    (kohya's --train_data_dir and our dataset.path)."""
    root = Path(workdir) / "data" / f"r{resolution}-n{count}-s{seed}"
    done = root / ".complete"
    if done.is_file():
        return root
    subset = root / SUBSET
    subset.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(count):
        _image(rng, resolution).save(subset / f"img_{i:03d}.png")
        (subset / f"img_{i:03d}.txt").write_text(_caption(rng) + "\n", encoding="utf-8")
    done.write_text(json.dumps({"resolution": resolution, "count": count, "seed": seed}), encoding="utf-8")
    return root


def ensure_kohya_tokenizers(workdir: Path) -> Path:
    """kohya downloads its CLIP tokenizers from the hub unless --tokenizer_cache_dir holds them; we write
    them from the BPE merges the trainer ships (the same vocabulary), so kohya runs offline too."""
    from lib_trainer.models.tokenizers import BOS, EOS, build_vocab, read_merges

    root = Path(workdir) / "kohya-tokenizers"
    merges = read_merges()
    vocab = build_vocab(merges)
    for folder, exclamation_pad in KOHYA_TOKENIZERS.items():
        target = root / folder
        if (target / "tokenizer_config.json").is_file():
            continue
        target.mkdir(parents=True, exist_ok=True)
        (target / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (target / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        pad = "!" if exclamation_pad else EOS
        special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad}
        (target / "special_tokens_map.json").write_text(json.dumps(special), encoding="utf-8")
        config = {
            "tokenizer_class": "CLIPTokenizer",
            "model_max_length": 77,
            "do_lower_case": True,
            **special,
        }
        (target / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return root
