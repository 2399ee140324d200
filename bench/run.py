"""Run the benchmark cases with our trainer (and kohya sd-scripts, given a checkout) and print the table.

    .venv/bin/python bench/run.py --device cpu
    python bench/run.py --device cuda --kohya-dir /path/to/sd-scripts --kohya-python /path/to/kohya/python

Each trainer runs as its own process under bench/probe.py, one case after another; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/run.py`: make `bench` and `lib_trainer` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import assets, envinfo, flops, kohya, ours, report  # noqa: E402
from bench.cases import ALL_CASES, Case, select_cases  # noqa: E402
from bench.stats import NotEnoughSteps, flop_utilisation, from_probe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_STEPS = {"cuda": 60, "cpu": 60}
DEFAULT_WARMUP = {"cuda": 10, "cpu": 10}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--cases", help=f"comma-separated, from: {', '.join(ALL_CASES)}")
    p.add_argument("--steps", type=int, help="optimizer steps per run (default 60)")
    p.add_argument("--warmup", type=int, help="steps left out of the statistics (default 10)")
    p.add_argument("--resolution", type=int, help="override every case's resolution (smoke runs)")
    p.add_argument("--kohya-dir", type=Path, help="a kohya-ss/sd-scripts checkout; kohya runs only if given")
    p.add_argument(
        "--kohya-python", default="python3", help="command that runs kohya's Python (split like a shell)"
    )
    p.add_argument("--kohya-commit", help="kohya's commit when --kohya-dir is not a git checkout")
    p.add_argument("--ours-python", default=sys.executable, help="command that runs our trainer's Python")
    p.add_argument("--trainers", default="ours,kohya", help="which trainers to run (ours,kohya)")
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "lora-trainer-bench",
        help="models, data and runs (reused between runs; outside the repository by default)",
    )
    p.add_argument("--out", type=Path, help="results JSON (default: WORKDIR/results-DEVICE-TIME.json)")
    p.add_argument("--dataset-images", type=int, default=assets.DATASET_IMAGES)
    p.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, if not in flops.py")
    p.add_argument("--no-flops", action="store_true", help="skip counting UNet FLOPs")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per trainer run")
    return p.parse_args(argv)


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def python_command(text: str) -> list[str]:
    """A Python command line; a relative interpreter path is made absolute (the trainers run elsewhere)."""
    parts = shlex.split(text)
    if parts and os.sep in parts[0] and Path(parts[0]).exists():
        parts[0] = str(Path(parts[0]).absolute())
    return parts


def child_env(launch: float, probe_out: Path) -> dict:
    env = dict(os.environ)
    env.update(
        BENCH_PROBE_OUT=str(probe_out),
        BENCH_LAUNCH_TIME=repr(launch),
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",  # the GPU machine has no network: fail at once instead of waiting
        TRANSFORMERS_OFFLINE="1",
    )
    return env


def skipped(reason: str, notes: list[str], command: list[str] | None = None) -> dict:
    return {
        "status": "skipped",
        "command": command,
        "cwd": None,
        "exit_code": None,
        "log": None,
        "notes": notes,
        "stats": None,
        "peak_rss_bytes": None,
        "cuda": None,
        "error": reason,
    }


def measure(command: list[str], cwd: Path, run_dir: Path, case: Case, warmup: int, timeout: float) -> dict:
    """Run one trainer under the probe and turn what it recorded into statistics."""
    import subprocess

    run_dir.mkdir(parents=True, exist_ok=True)
    probe_out, log = run_dir / "probe.json", run_dir / "log.txt"
    probe_out.unlink(missing_ok=True)
    run = skipped("", [], command) | {"cwd": str(cwd), "log": str(log), "error": None}
    print(f"  $ (cd {shlex.quote(str(cwd))} && {shlex.join(command)}) > {log}", flush=True)
    run["loadavg_before"] = os.getloadavg()  # other work on the machine skews timings, on a CPU above all
    launch = time.time()
    with log.open("w", encoding="utf-8") as out:
        try:
            proc = subprocess.run(
                command,
                cwd=cwd,
                env=child_env(launch, probe_out),
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
            run["exit_code"] = proc.returncode
        except subprocess.TimeoutExpired:
            run["exit_code"] = None
            run["error"] = f"timed out after {timeout:.0f} s"
    run["wall_s"] = time.time() - launch
    run["loadavg_after"] = os.getloadavg()
    probe = json.loads(probe_out.read_text(encoding="utf-8")) if probe_out.is_file() else None
    run["probe"] = probe
    if probe is not None:
        run["peak_rss_bytes"] = probe["peak_rss_bytes"]
        run["cuda"] = probe["cuda"]
        try:
            run["stats"] = from_probe(probe, case.batch_size, warmup).to_dict()
        except NotEnoughSteps as exc:
            run["error"] = run["error"] or str(exc)
    if run["exit_code"] == 0 and run["stats"]:
        run["status"] = "ok"
    else:
        run["status"] = "failed"
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
        run["error"] = run["error"] or f"exit code {run['exit_code']}"
        run["log_tail"] = tail
    return run


def busy_note(run: dict, device: str) -> list[str]:
    """On a CPU, a load from other processes during the run makes its timings worthless: say so."""
    load = max(run["loadavg_after"][0], run["loadavg_before"][0])
    cores = len(os.sched_getaffinity(0))  # a run on the CPU keeps every core busy by itself
    if device == "cpu" and load > cores + 0.5:
        return [f"machine busy: 1-min load {load:.1f} around the run"]
    return []


def run_ours(case: Case, args, model: Path, data: Path, run_dir: Path, device: str) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = ours.spec(case, model, data, run_dir / "output", args.steps, device)
    spec_file = run_dir / "spec.json"
    spec_file.write_text(json.dumps(spec, indent=1), encoding="utf-8")
    command = ours.command(python_command(args.ours_python), spec_file, run_dir / "job")
    if case.optimizer == "AdamW8bit" and device != "cuda":
        return skipped("AdamW8bit needs CUDA", ours.notes(case), command)
    run = measure(command, REPO, run_dir, case, args.warmup, args.timeout)
    run["notes"] = ours.notes(case) + busy_note(run, device)
    run["spec"] = spec
    run["caching_s"] = ours.caching_seconds(run_dir / "job" / "events.jsonl")
    return run


def run_kohya(
    case: Case, args, model: Path, data: Path, tokenizers: Path, run_dir: Path, device: str
) -> dict:
    notes = kohya.notes(case)
    if case.size != "full":
        return skipped("tiny models are ours only", notes)
    if case.optimizer == "AdamW8bit" and device != "cuda":
        return skipped("AdamW8bit needs CUDA", notes)
    try:
        script = kohya.script_path(args.kohya_dir, case)
    except kohya.KohyaError as exc:
        return skipped(str(exc), notes)
    arguments = kohya.arguments(case, model, data, run_dir / "output", tokenizers, args.steps)
    command = kohya.command(python_command(args.kohya_python), ours.PROBE, script, arguments)
    missing = kohya.missing_flags(args.kohya_dir, kohya.flag_names(arguments))
    if missing:
        return skipped(f"this kohya checkout has no {', '.join(missing)}", notes, command)
    run = measure(command, args.kohya_dir, run_dir, case, args.warmup, args.timeout)
    run["notes"] = notes + busy_note(run, device)
    return run


def count_flops(case: Case, model: Path, enabled: bool) -> dict | None:
    if not enabled:
        return None
    try:
        return flops.step_flops(model, case.batch_size, case.resolution, case.rank)
    except Exception as exc:  # noqa: BLE001 - a missing FLOP count must not lose the timings
        return {"error": f"{type(exc).__name__}: {exc}"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    args.steps = args.steps or DEFAULT_STEPS[device]
    args.warmup = DEFAULT_WARMUP[device] if args.warmup is None else args.warmup
    cases = select_cases(args.cases, device, args.resolution)
    trainers = {t.strip() for t in args.trainers.split(",")}
    with_kohya = "kohya" in trainers and args.kohya_dir is not None
    if args.kohya_dir is not None:
        args.kohya_dir = args.kohya_dir.resolve()  # kohya runs with its folder as working directory
    workdir = args.workdir.resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs_root = workdir / "runs" / f"{device}-{stamp}"
    ours_python = python_command(args.ours_python)

    ours_versions = envinfo.python_versions(ours_python, cwd=REPO)
    gpu = envinfo.gpu(ours_versions) if device == "cuda" else None
    peak = flops.peak_bf16_flops(gpu["name"] if gpu else None, args.peak_tflops)
    results = {
        "schema": report.SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": device,
        "device_info": {"gpu": gpu, "machine": envinfo.machine(), "peak_bf16_flops": peak},
        "settings": {
            "steps": args.steps,
            "warmup": args.warmup,
            "dataset_images": args.dataset_images,
            "workdir": str(workdir),
            "runs": str(runs_root),
            "argv": sys.argv,
        },
        "ours": {
            "commit": envinfo.git_commit(REPO),
            "python": ours_python,
            "versions": ours_versions,
        },
        "kohya": None,
        "cases": [],
    }
    tokenizers = None
    if with_kohya:
        kohya_python = python_command(args.kohya_python)
        results["kohya"] = {
            "dir": str(args.kohya_dir),
            "commit": args.kohya_commit or kohya.commit(args.kohya_dir),
            "target_commit": kohya.TARGET_COMMIT,
            "python": kohya_python,
            "versions": envinfo.python_versions(kohya_python, cwd=args.kohya_dir),
        }
        tokenizers = assets.ensure_kohya_tokenizers(workdir)
    print(report.format_summary(results), flush=True)

    for case in cases:
        print(
            f"\n== {case.name}: {case.arch} {case.size}, {case.resolution} px, batch {case.batch_size}, "
            f"{case.optimizer}",
            flush=True,
        )
        model = assets.ensure_checkpoint(workdir, case.arch, case.size, ours_python)
        data = assets.ensure_dataset(workdir, case.resolution, args.dataset_images)
        entry = {"case": case.to_dict(), "model": str(model), "dataset": str(data), "runs": {}}
        entry["flops"] = count_flops(case, model, not args.no_flops)
        case_dir = runs_root / case.name
        if "ours" in trainers:
            entry["runs"]["ours"] = run_ours(case, args, model, data, case_dir / "ours", device)
        if with_kohya:
            entry["runs"]["kohya"] = run_kohya(
                case, args, model, data, tokenizers, case_dir / "kohya", device
            )
        step_flops = (entry["flops"] or {}).get("total")
        for run in entry["runs"].values():
            if run["status"] == "ok" and device == "cuda":
                run["flop_utilisation"] = flop_utilisation(step_flops, run["stats"]["it_per_s"], peak)
            for line in run.get("log_tail") or []:
                print(f"    | {line}")
        entry["ratios"] = report.case_ratios(entry["runs"])
        results["cases"].append(entry)
        out = report.save(results, args.out or workdir / f"results-{device}-{stamp}.json")  # after each case

    print()
    print(report.format_summary(results))
    print()
    print(report.format_table(results))
    print(f"\nresults: {out}")
    failed = [
        c["case"]["name"] for c in results["cases"] for r in c["runs"].values() if r["status"] == "failed"
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
