"""The built-in default job: a tiny random model and a small generated dataset, so a fresh machine can run
the whole trainer (load, bucket, cache, train, sample, export) in about a minute with no download or GPU."""

from __future__ import annotations

import random
import time
from pathlib import Path

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 40)}


def make_dataset(folder: Path, count: int = 12, seed: int = 0, trigger: str = "sks") -> Path:
    """Images of simple shapes in a kohya-style `<repeats>_<name>` folder, with tag captions."""
    rng = random.Random(seed)
    subset = folder / f"2_{trigger} shape"
    subset.mkdir(parents=True, exist_ok=True)
    sizes = [(96, 96), (128, 96), (96, 128)]
    for i in range(count):
        shape = SHAPES[i % len(SHAPES)]
        colour = rng.choice(list(COLOURS))
        w, h = sizes[i % len(sizes)]
        img = Image.new("RGB", (w, h), (245, 245, 245))
        draw = ImageDraw.Draw(img)
        r = min(w, h) // 3
        cx, cy = w // 2 + rng.randint(-8, 8), h // 2 + rng.randint(-8, 8)
        box = (cx - r, cy - r, cx + r, cy + r)
        if shape == "circle":
            draw.ellipse(box, fill=COLOURS[colour])
        elif shape == "square":
            draw.rectangle(box, fill=COLOURS[colour])
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLOURS[colour])
        img.save(subset / f"img_{i:03d}.png")
        (subset / f"img_{i:03d}.txt").write_text(
            f"{trigger}, a {colour} {shape}, white background\n", encoding="utf-8"
        )
    return folder


def demo_spec(workdir: Path, model: Path, dataset: Path, arch: str) -> dict:
    return {
        "spec_version": 1,
        "name": f"demo_{arch}",
        "mode": "lora",
        "model": {"checkpoint": str(model), "vae": "none"},
        "dataset": {
            "path": str(dataset),
            "trigger_word": "sks",
            "caption_extension": ".txt",
            "flip_aug": True,
            "min_bucket_reso": 64,
            "max_bucket_reso": 128,
        },
        "network": {"rank": 4, "alpha": 2, "train_text_encoder": True},
        "training": {
            "epochs": 3,
            "batch_size": 2,
            "resolution": 64,
            "learning_rate": 1e-3,
            "optimizer": "AdamW",
            "lr_scheduler": "cosine",
            "mixed_precision": "bf16",
            "seed": 42,
            "device": "auto",
        },
        "output": {"dir": str(workdir / "Lora"), "save_every_epochs": 1, "save_precision": "fp16"},
        "samples": {
            "every_epochs": 1,
            "sampler": "euler_a",
            "prompts": [
                {"prompt": "{trigger}, a red circle", "negative_prompt": "blurry", "seed": 1, "steps": 4}
            ],
        },
    }


def run_demo(workdir: Path, arch: str = "sd1") -> int:
    import json

    from .cli import main as cli_main
    from .models.tiny import write_random_checkpoint

    workdir = Path(workdir)
    model = workdir / f"tiny-{arch}.safetensors"
    if not model.exists():
        write_random_checkpoint(model, arch, v_prediction=arch == "sd2")
        print(f"made a tiny random {arch} model: {model}")
    dataset = workdir / "dataset"
    if not dataset.exists():
        make_dataset(dataset)
        print(f"made a generated dataset: {dataset}")
    spec_path = workdir / "demo-job.json"
    spec_path.write_text(json.dumps(demo_spec(workdir, model, dataset, arch), indent=2), encoding="utf-8")
    job_dir = workdir / "jobs" / f"demo-{arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    return cli_main(["train", str(spec_path), "--job-dir", str(job_dir)])
