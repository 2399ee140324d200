"""Quality vs steps on the toy world: the default preset, the job spec's defaults and the main options.

    .venv/bin/python -m tests.quality.make_quality_table [--only default,prodigy] [--style] [--json out.json]

Each variant trains the same held-out-subject LoRA (8 pictures x 10 repeats, 10 epochs = 800 steps at batch 1;
the `-long` variants `scores.SUBJECT_EPOCHS`, as the quality tests train) in a trainer process of its own, as
the WebUI starts them, one per core side by side (`training_pool`), and the epoch files it saves are judged as
the quality tests judge them (`scores.score_model`, merged from the kohya files). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from . import harness as h
from . import scores
from . import toyworld as tw
from .judge import load_judge
from .training_pool import TrainingPool

_PRODIGY = {"optimizer": "Prodigy", "learning_rate": 1.0}
_LEARNT_TRIGGER = {"dataset": {"trigger_word": tw.SUBJECT_TOKEN}, "network": {"learn_trigger": True}}
VARIANTS: dict[str, tuple[str, str, dict]] = {
    # name: (mode, what it changes, spec sections on top of the job spec's defaults). The options are measured
    # on top of Prodigy, the setting that learns the subject within 800 steps here (see docs/quality.md).
    "default": ("lora", "job spec defaults: AdamW 1e-4, rank 16 / alpha 8, UNet only", {}),
    "default-long": ("lora", f"job spec defaults, {scores.SUBJECT_EPOCHS} epochs", {}),
    "default+learnt-prior-long": (
        "dreambooth-lora",
        f"job spec defaults, {scores.SUBJECT_EPOCHS} epochs, prior 'trigger-off', learnt trigger word",
        scores.LEARNT_TRIGGER_PRIOR,
    ),
    "preset": (
        "lora",
        "default preset (the tab's for SD1.5): AdamW 1e-4, text encoder 5e-5, min-SNR 5, rank 16 / alpha 8",
        scores.PLAIN_SUBJECT,
    ),
    "preset-long": (
        "lora",
        f"default preset, {scores.SUBJECT_EPOCHS} epochs (the quality tests' plain subject LoRA)",
        scores.PLAIN_SUBJECT,
    ),
    "preset+learn-trigger-long": (
        "lora",
        f"default preset, {scores.SUBJECT_EPOCHS} epochs, learnt trigger word (network.learn_trigger), no prior",
        h.merge_sections(scores.DEFAULT_PRESET, _LEARNT_TRIGGER),
    ),
    "preset+learnt-prior-long": (
        "dreambooth-lora",
        f"default preset, {scores.SUBJECT_EPOCHS} epochs, prior 'trigger-off', learnt trigger word "
        "(the quality tests' prior job until the twenty-second session)",
        h.merge_sections(scores.DEFAULT_PRESET, scores.LEARNT_TRIGGER_PRIOR),
    ),
    "preset+learnt-prior+folder-long": (
        "dreambooth-lora",
        f"default preset, {scores.SUBJECT_EPOCHS} epochs, prior 'trigger-off+class-images' with a captioned "
        "class folder, learnt trigger word (the quality tests' prior job)",
        scores.PRIOR_SUBJECT,
    ),
    "adamw-1e-3": ("lora", "AdamW 1e-3", {"training": {"learning_rate": 1e-3}}),
    "prodigy": ("lora", "Prodigy (learning rate 1.0)", {"training": _PRODIGY}),
    "prodigy+min-snr": ("lora", "Prodigy, min-SNR gamma 5", {"training": {**_PRODIGY, "min_snr_gamma": 5.0}}),
    "prodigy+rank4": (
        "lora",
        "Prodigy, rank 4 / alpha 2",
        {"training": _PRODIGY, "network": {"rank": 4, "alpha": 2.0}},
    ),
    "prodigy+rank32": (
        "lora",
        "Prodigy, rank 32 / alpha 16",
        {"training": _PRODIGY, "network": {"rank": 32, "alpha": 16.0}},
    ),
    "prodigy+te": (
        "lora",
        "Prodigy, text encoder on",
        {"training": _PRODIGY, "network": {"train_text_encoder": True}},
    ),
    "prodigy+prior": (
        "dreambooth-lora",
        f"Prodigy, prior preservation ('{scores.CLASS_PROMPT}', class pictures drawn by the base model)",
        {"training": _PRODIGY},
    ),
    "prodigy+prior-folder": (
        "dreambooth-lora",
        "Prodigy, prior preservation with a captioned folder of class pictures",
        {"training": _PRODIGY},
    ),
    "prodigy+trigger-off": (
        "dreambooth-lora",
        "Prodigy, min-SNR 5, text encoder on, prior preservation 'trigger-off' (each caption without 'ohwx')",
        {
            "training": {**_PRODIGY, "min_snr_gamma": 5.0},
            "network": {"train_text_encoder": True},
            "dataset": {"trigger_word": tw.SUBJECT_TOKEN},
            "dreambooth": {"prior": "trigger-off"},
        },
    ),
    "prodigy+learn-trigger": (
        "lora",
        "Prodigy, learnt trigger word (network.learn_trigger), no prior",
        {**_LEARNT_TRIGGER, "training": _PRODIGY},
    ),
    "prodigy+trigger-off+learn-trigger": (
        "dreambooth-lora",
        "Prodigy, UNet only, learnt trigger word, prior preservation 'trigger-off'",
        {**scores.LEARNT_TRIGGER_PRIOR, "training": _PRODIGY},
    ),
}
CLASS_FOLDER_VARIANTS = ("prodigy+prior-folder", "preset+learnt-prior+folder-long")
TABLE_EPOCHS = 10
LONG_EPOCHS = scores.SUBJECT_EPOCHS
"""For the variants named `-long`: AdamW 1e-4 needs about 3x the table's steps."""


def judged_epochs(epochs: int) -> tuple[int, ...]:
    """A fifth, half and all of the job: 160 / 400 / 800 steps for the table's 10 epochs."""
    return (epochs // 5, epochs // 2, epochs)


COLUMNS = ("trigger_subject", "trigger_colour", "class_subject", "known_correct", "known_subject")
HEADER = (
    "| variant | steps | subject with trigger | its colour | subject on class prompt | known shapes right "
    "| subject without trigger |"
)


def variant_job(name: str, root: Path) -> dict:
    mode, _, sections = VARIANTS[name]
    return scores.subject_job(
        root,
        name.replace("+", "_"),
        mode,
        class_pictures=name in CLASS_FOLDER_VARIANTS,
        epochs=variant_epochs(name),
        **sections,
    )


def variant_epochs(name: str) -> int:
    return LONG_EPOCHS if name.endswith("-long") else TABLE_EPOCHS


def run_variant(name: str, lora: h.TrainedLora, judge) -> list[dict]:
    rows = []
    for epoch, step, path in lora.saved:
        if epoch not in judged_epochs(variant_epochs(name)):
            continue
        with torch.no_grad():
            result = scores.score_model(h.with_lora(path), judge)
        rows.append(
            {"variant": name, "steps": step, "train_seconds": round(lora.train_seconds), **vars(result)}
        )
        print(markdown_row(rows[-1]), flush=True)
    return rows


STYLE_HEADER = (
    "| style LoRA (Prodigy) | steps | striped, trained shapes | striped, unseen shapes | unseen shape kept "
    "| unseen colour kept | striped without trigger |"
)
STYLE_COLUMNS = ("seen_striped", "unseen_striped", "unseen_shape", "unseen_colour", "plain_striped")


def run_style(lora: h.TrainedLora, judge) -> list[dict]:
    """The style LoRA (striped circles and squares), judged on its own shapes and on unseen ones."""
    rows = []
    for epoch, step, path in lora.saved:
        if epoch not in judged_epochs(TABLE_EPOCHS):
            continue
        with torch.no_grad():
            model = h.with_lora(path)
            unseen = scores.score_style(model, judge)
            seen = h.judged(model, judge, h.style_probes(True, tw.STYLE_TRAIN_SHAPES), scores.TRIGGER_SEEDS)
        row = {"variant": "style", "steps": step, "seen_striped": h.rate(seen, lambda i, v: v.striped)}
        rows.append({**row, **vars(unseen)})
        cells = [f"{rows[-1][c] * 100:.0f} %" for c in STYLE_COLUMNS]
        print("| | " + " | ".join([str(step), *cells]) + " |", flush=True)
    return rows


def separator(header: str) -> str:
    """The markdown rule under `header`, with as many columns as the header has."""
    return "|" + "---|" * (header.count("|") - 1)


def markdown_row(row: dict) -> str:
    cells = [row["variant"], str(row["steps"])] + [f"{row[c] * 100:.0f} %" for c in COLUMNS]
    return "| " + " | ".join(cells) + " |"


def judge_all(pool: TrainingPool, names: list[str], style: bool) -> list[dict]:
    judge = load_judge()
    with torch.no_grad():
        base = scores.score_model(h.load_toy_base(), judge, with_style=True)
    print(f"base model: {json.dumps({k: round(v, 3) for k, v in vars(base).items()})}")
    print(HEADER)
    print(separator(HEADER))
    rows = [{"variant": "base model", "steps": 0, **vars(base)}]
    print(markdown_row(rows[0]), flush=True)
    for name in names:
        lora = pool.result(name)
        torch.set_num_threads(pool.free_cores())  # the cores no trainer holds (both once all are done)
        rows += run_variant(name, lora, judge)
    if style:
        print(f"\n{STYLE_HEADER}\n{separator(STYLE_HEADER)}")
        lora = pool.result("style")
        torch.set_num_threads(pool.free_cores())
        rows += run_style(lora, judge)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--only", default=",".join(VARIANTS), help="comma-separated variants: " + ", ".join(VARIANTS)
    )
    ap.add_argument("--style", action="store_true", help="also train and judge the style LoRA")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument(
        "--jobs", type=int, help="trainer processes side by side, one thread each (default: one per core)"
    )
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    torch.set_num_threads(1)  # judging the base model shares the cores with the trainers
    with tempfile.TemporaryDirectory(prefix="quality-table-") as tmp:
        pool = TrainingPool(args.jobs)
        try:
            # all jobs are queued at once and train side by side while the finished ones are judged
            for name in names:
                pool.submit(name, variant_job(name, Path(tmp) / name), Path(tmp) / name / "job")
            if args.style:
                style = scores.style_job(Path(tmp) / "style", "style", training=scores.STYLE_TRAINING)
                pool.submit("style", style, Path(tmp) / "style" / "job")
            rows = judge_all(pool, names, args.style)
        finally:
            pool.close()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
