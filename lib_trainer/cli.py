"""Command line: `python -m lib_trainer train|tiny-model|inspect|demo ...`.

The CLI builds the same job spec as the WebUI tab and the REST API and hands it to the same `run_job`, so
anything that works here works there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import __version__


def _add_spec_flags(parser: argparse.ArgumentParser) -> None:
    from .spec import CLI_FLAGS

    group = parser.add_argument_group("job settings (override the spec file)")
    for flag, field, kind, help_text in CLI_FLAGS:
        dest = "spec__" + field.replace(".", "__")
        if kind is bool:
            group.add_argument(
                flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            group.add_argument(
                flag, dest=dest, type=kind, default=None, metavar=field.split(".")[-1].upper(), help=help_text
            )


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    out = {}
    for key, value in vars(args).items():
        if key.startswith("spec__") and value is not None:
            out[key[len("spec__") :].replace("__", ".")] = value
    return out


def _print_event(event: dict) -> None:
    from .train.events import format_event

    line = format_event(event)
    if line is not None:
        print(line, file=sys.stderr if event["type"] in ("warning", "error") else sys.stdout, flush=True)


def _print_errors(event: dict) -> None:
    if event["type"] == "error":
        _print_event(event)


def _default_job_dir(name: str) -> Path:
    return Path("lora-trainer-jobs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def cmd_train(args: argparse.Namespace) -> int:
    from .spec import SpecError, apply_overrides, load_spec_file, spec_from_dict
    from .train.job import run_job

    try:
        if args.resume:
            job_dir = Path(args.resume)
            job_file = job_dir / "job.json"
            if not job_file.is_file():
                print(
                    f"ERROR: {job_file} not found; --resume takes a job folder of an earlier run",
                    file=sys.stderr,
                )
                return 2
            data = json.loads(job_file.read_text(encoding="utf-8"))
            if not (job_dir / "state" / "progress.json").is_file():
                print(f"ERROR: {job_dir} has no saved state to resume from", file=sys.stderr)
                return 2
        else:
            data = load_spec_file(Path(args.spec)) if args.spec else {}
            data.setdefault("spec_version", 1)
            data.setdefault("output", {}).setdefault("dir", "lora-output")
        data = apply_overrides(data, _overrides(args))
        spec = spec_from_dict(data)
    except SpecError as exc:
        print(f"ERROR: the job spec has problems:\n{exc}", file=sys.stderr)
        return 2
    job_dir = Path(args.resume) if args.resume else Path(args.job_dir or _default_job_dir(spec.name))
    print(f"job folder: {job_dir}", flush=True)
    code = run_job(
        spec, job_dir, resume=bool(args.resume), echo=_print_errors if args.quiet else _print_event
    )
    if code == 0:
        final = Path(spec.output.dir) / "unknown"
        for line in reversed((job_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()):
            event = json.loads(line)
            if event["type"] == "done":
                final = Path(spec.output.dir) / f"{event['output_name']}.safetensors"
                break
        print(f"LoRA written to: {final.resolve()}", flush=True)
    return code


def cmd_run(args: argparse.Namespace) -> int:
    """Run the job whose spec is JOB_DIR/job.json: how the WebUI's job manager starts the trainer."""
    from .spec import SpecError, spec_from_dict
    from .train.job import run_job

    job_dir = Path(args.job_dir)
    job_file = job_dir / "job.json"
    try:
        spec = spec_from_dict(json.loads(job_file.read_text(encoding="utf-8")))
    except FileNotFoundError:
        print(f"ERROR: {job_file} not found", file=sys.stderr)
        return 2
    except (SpecError, ValueError) as exc:
        print(f"ERROR: {job_file} has problems:\n{exc}", file=sys.stderr)
        return 2
    if args.resume and not (job_dir / "state" / "progress.json").is_file():
        print(f"ERROR: {job_dir} has no saved state to resume from", file=sys.stderr)
        return 2
    return run_job(spec, job_dir, resume=args.resume, echo=_print_errors if args.quiet else _print_event)


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from .models.tiny import write_random_checkpoint

    path = write_random_checkpoint(
        Path(args.out), args.arch, size=args.size, seed=args.seed, v_prediction=args.v_prediction
    )
    print(f"wrote {args.size} random {args.arch} checkpoint: {path}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .inspect_file import inspect_path

    try:
        report = inspect_path(Path(args.file))
    except (ValueError, OSError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False, default=str))
    else:
        from .inspect_file import format_report

        print(format_report(report))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(Path(args.workdir), arch=args.arch)


def cmd_extract_lora(args: argparse.Namespace) -> int:
    from .export.extract_lora import extract_lora_file
    from .models.arch import ModelFormatError

    try:
        path, layers = extract_lora_file(
            Path(args.base),
            Path(args.tuned),
            Path(args.out),
            rank=args.rank,
            text_encoders=not args.unet_only,
            precision=args.precision,
        )
    except (ValueError, OSError, ModelFormatError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    kept = min(layer.kept for layer in layers)
    print(
        f"{path}: {len(layers)} layers at rank {args.rank} (the worst layer keeps {kept:.1%} of its change)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lib_trainer", description="LoRA trainer for Stable Diffusion"
    )
    parser.add_argument("--version", action="version", version=f"lib_trainer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="run one training job in the foreground")
    train.add_argument("spec", nargs="?", help="job spec file (.json or .toml); flags below override it")
    train.add_argument("--job-dir", help="folder for job.json, events.jsonl, samples and resume state")
    train.add_argument("--resume", metavar="JOB_DIR", help="continue a stopped job from its job folder")
    train.add_argument("--quiet", action="store_true", help="print only errors and the final file")
    _add_spec_flags(train)
    train.set_defaults(func=cmd_train)

    run = sub.add_parser("run", help="run the job described by JOB_DIR/job.json (used by the WebUI)")
    run.add_argument("job_dir")
    run.add_argument("--resume", action="store_true", help="continue from JOB_DIR/state")
    run.add_argument("--quiet", action="store_true", help="print only errors")
    run.set_defaults(func=cmd_run)

    tiny = sub.add_parser(
        "tiny-model", help="write a random-weight checkpoint in the real single-file layout"
    )
    tiny.add_argument("out", help="output .safetensors path")
    tiny.add_argument("--arch", choices=("sd1", "sd2", "sdxl"), required=True)
    tiny.add_argument(
        "--size", choices=("tiny", "full"), default="tiny", help="tiny widths (default) or full size"
    )
    tiny.add_argument("--v-prediction", action="store_true", help="mark the model as v-prediction (SD2-v)")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_tiny_model)

    insp = sub.add_parser("inspect", help="describe a LoRA file or a checkpoint")
    insp.add_argument("file")
    insp.add_argument("--json", action="store_true", help="print JSON instead of text")
    insp.set_defaults(func=cmd_inspect)

    ext = sub.add_parser("extract-lora", help="make a LoRA from a fine-tuned checkpoint and its base")
    ext.add_argument("base", help="the base checkpoint (.safetensors)")
    ext.add_argument("tuned", help="the fine-tuned checkpoint (.safetensors)")
    ext.add_argument("out", help="the LoRA file to write (.safetensors; an existing file is never replaced)")
    ext.add_argument("--rank", type=int, default=32, help="LoRA rank (higher keeps more of the change)")
    ext.add_argument("--unet-only", action="store_true", help="leave the text encoders out")
    ext.add_argument("--precision", choices=("fp16", "bf16", "fp32"), default="fp16")
    ext.set_defaults(func=cmd_extract_lora)

    demo = sub.add_parser("demo", help="train a tiny LoRA on a generated dataset (no download, CPU is fine)")
    demo.add_argument("--workdir", default="demo", help="where the tiny model, dataset and outputs go")
    demo.add_argument("--arch", choices=("sd1", "sd2", "sdxl"), default="sd1")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))
