"""The results file (JSON, schema below) and the table printed from it.

One file holds everything needed to judge and reproduce a run: the device, every version on each side,
both commits, the exact command lines, and per case and trainer the raw step times with the statistics.
`validate` is what the tests hold the runner to, so the docs' tables and later comparisons can rely on
these keys.
"""

from __future__ import annotations

import json
from pathlib import Path

SCHEMA = "lora-trainer-bench/1"
TRAINERS = ("ours", "kohya")
TOP_KEYS = ("schema", "created", "device", "device_info", "settings", "ours", "kohya", "cases")
RUN_KEYS = (
    "status",
    "command",
    "cwd",
    "exit_code",
    "log",
    "notes",
    "stats",
    "peak_rss_bytes",
    "cuda",
    "error",
)
RUN_STATUSES = ("ok", "failed", "skipped")


class SchemaError(ValueError):
    pass


def ratio(ours: float | None, kohya: float | None) -> float | None:
    if ours is None or kohya is None or kohya == 0:
        return None
    return ours / kohya


def case_ratios(runs: dict) -> dict:
    """ours / kohya for speed (higher is better for us), VRAM and time to first step (lower is better)."""

    def pick(name: str, getter) -> float | None:
        run = runs.get(name) or {}
        if run.get("status") != "ok":
            return None
        try:
            return getter(run)
        except (KeyError, TypeError):
            return None

    def both(getter) -> float | None:
        return ratio(pick("ours", getter), pick("kohya", getter))

    return {
        "it_per_s": both(lambda r: r["stats"]["it_per_s"]),
        "peak_vram_reserved": both(lambda r: r["cuda"]["peak_reserved_bytes"]),
        "training_vram_reserved": both(lambda r: r["cuda"]["training_peak_reserved_bytes"]),
        "peak_rss": both(lambda r: r["peak_rss_bytes"]),
        "time_to_first_step": both(lambda r: r["stats"]["time_to_first_step_s"]),
    }


def validate(results: dict) -> None:
    """Raise SchemaError when `results` lacks what the table, the docs and comparisons read."""
    missing = [k for k in TOP_KEYS if k not in results]
    if missing:
        raise SchemaError(f"missing top-level keys: {missing}")
    if results["schema"] != SCHEMA:
        raise SchemaError(f"schema {results['schema']!r}, expected {SCHEMA!r}")
    if results["device"] not in ("cpu", "cuda"):
        raise SchemaError(f"device {results['device']!r}")
    for key in ("commit", "python", "versions"):
        if key not in results["ours"]:
            raise SchemaError(f"ours.{key} missing")
    if results["kohya"] is not None:
        for key in ("dir", "commit", "python", "versions"):
            if key not in results["kohya"]:
                raise SchemaError(f"kohya.{key} missing")
    for i, case in enumerate(results["cases"]):
        for key in ("case", "flops", "runs", "ratios"):
            if key not in case:
                raise SchemaError(f"cases[{i}].{key} missing")
        for trainer, run in case["runs"].items():
            if trainer not in TRAINERS:
                raise SchemaError(f"cases[{i}].runs: unknown trainer {trainer!r}")
            lacking = [k for k in RUN_KEYS if k not in run]
            if lacking:
                raise SchemaError(f"cases[{i}].runs.{trainer}: missing {lacking}")
            if run["status"] not in RUN_STATUSES:
                raise SchemaError(f"cases[{i}].runs.{trainer}.status {run['status']!r}")
            if run["status"] == "ok" and not run["stats"]:
                raise SchemaError(f"cases[{i}].runs.{trainer}: ok without stats")


def save(results: dict, path: Path) -> Path:
    validate(results)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)
    return path


def _num(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def _gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 2**30:.2f}"


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f}"


def _x(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def _run_row(name: str, trainer: str, run: dict, gpu: bool) -> list[str]:
    stats = run.get("stats") or {}
    cuda = run.get("cuda") or {}
    if run["status"] != "ok":
        reason = run["status"] + (f": {run['error']}" if run.get("error") else "")
        blank = [""] * (len(_header(gpu)) - 3)
        return [name, trainer, *blank, reason[:120]]
    row = [
        name,
        trainer,
        _num(stats.get("it_per_s"), ".2f"),
        _num(stats.get("images_per_s"), ".2f"),
        _num(stats["median_step_s"] * 1000 if stats.get("median_step_s") else None, ".1f"),
    ]
    if gpu:
        row += [_gib(cuda.get("peak_reserved_bytes")), _gib(cuda.get("training_peak_reserved_bytes"))]
    row += [_mib(run.get("peak_rss_bytes")), _num(stats.get("time_to_first_step_s"), ".1f")]
    if gpu:
        util = run.get("flop_utilisation")
        row.append("n/a" if util is None else f"{util * 100:.1f}%")
    row.append("; ".join(run.get("notes") or []))
    return row


def _header(gpu: bool) -> list[str]:
    header = ["case", "trainer", "it/s", "images/s", "step ms"]
    if gpu:
        header += ["peak VRAM GiB", "train VRAM GiB"]
    header += ["peak RSS MiB", "first step s"]
    if gpu:
        header.append("MFU")
    header.append("notes")
    return header


def table_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    gpu = results["device"] == "cuda"
    header = _header(gpu)
    rows = []
    for case in results["cases"]:
        name = case["case"]["name"]
        for trainer in TRAINERS:
            run = case["runs"].get(trainer)
            if run is not None:
                rows.append(_run_row(name, trainer, run, gpu))
        r = case["ratios"]
        if any(v is not None for v in r.values()):
            row = [name, "ours/kohya", _x(r["it_per_s"]), _x(r["it_per_s"]), ""]
            if gpu:
                row += [_x(r["peak_vram_reserved"]), _x(r["training_vram_reserved"])]
            row += [_x(r["peak_rss"]), _x(r["time_to_first_step"])]
            if gpu:
                row.append("")
            row.append("speed: higher is better; memory, first step: lower is better")
            rows.append(row)
    return header, rows


def format_table(results: dict) -> str:
    """A Markdown table (pipes aligned, readable in a terminal too)."""
    header, rows = table_rows(results)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def format_summary(results: dict) -> str:
    """The lines above the table: device, versions, commits."""
    info = results["device_info"]
    gpu = info.get("gpu")
    device = gpu["name"] if gpu else f"CPU {info['machine']['cpu']} ({info['machine']['cores']} cores)"
    lines = [f"device: {device}"]
    ours = results["ours"]
    lines.append(f"ours:  commit {ours['commit']}; {_versions(ours['versions'])}")
    kohya = results["kohya"]
    if kohya:
        lines.append(f"kohya: commit {kohya['commit']}; {_versions(kohya['versions'])}")
    s = results["settings"]
    lines.append(
        f"{s['steps']} steps per run, statistics over the steps after the first {s['warmup']}; "
        f"{s['dataset_images']} images"
    )
    return "\n".join(lines)


def _versions(v: dict) -> str:
    if "error" in v:
        return f"versions unknown ({v['error'][:80]})"
    keys = ("python", "torch", "diffusers", "transformers", "peft", "accelerate", "bitsandbytes", "xformers")
    text = ", ".join(f"{k} {v.get(k, '?')}" for k in keys)
    if v.get("torch_cuda"):
        text += f", CUDA {v['torch_cuda']}"
    return text
