"""Where the time of one training step goes: phases, op categories and the top ops of our trainer.

    .venv/bin/python bench/profile_step.py --case tiny-sd1-b4
    python bench/profile_step.py --case sd15-b4 --device cuda --trace sd15-b4-trace.json

Runs our trainer in this process (the unchanged `run_job`), lets it warm up, then profiles a few steps
with torch.profiler. The step boundaries come from the same optimizer-step hook as bench/probe.py, and the
phases from global module hooks on the text encoders and the UNet (synchronised on CUDA, so the phase
times are real but the steps run a little slower than unprofiled ones).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):  # `python bench/profile_step.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import assets, ours  # noqa: E402
from bench.cases import ALL_CASES  # noqa: E402

# Op name patterns -> category; first match wins.
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("optimizer", r"adam|_foreach_|optimizer|clip_grad|_fused"),
    ("attention", r"scaled_dot_product|flash_attention|efficient_attention|softmax|_cudnn_attention"),
    ("convolution", r"conv"),
    ("matmul / linear", r"\b(aten::)?(mm|addmm|bmm|baddbmm|matmul|linear)\b|gemm"),
    ("normalisation", r"group_norm|layer_norm|native_batch_norm"),
    ("activation", r"gelu|silu|sigmoid|tanh|relu"),
    ("copies / casts", r"copy_|::to\b|_to_copy|contiguous|clone|cat\b|stack|empty|fill_|zero_"),
    ("elementwise", r"add|mul|sub|div|pow|sqrt|exp|neg|where|mean|sum"),
)
WATCHED = {
    "UNet2DConditionModel": "unet forward",
    "CLIPTextModel": "text encoder forward",
    "CLIPTextModelWithProjection": "text encoder forward",
}


def category(op_name: str) -> str:
    name = op_name.lower()
    for label, pattern in CATEGORIES:
        if re.search(pattern, name):
            return label
    return "other"


class StepProfiler:
    """Global hooks: phase timers on every step, torch.profiler over steps warmup+1 .. warmup+steps."""

    def __init__(self, warmup: int, steps: int, cuda: bool, trace: Path | None, ops: bool = True):
        self.warmup, self.steps, self.cuda, self.trace, self.ops = warmup, steps, cuda, trace, ops
        self.step = 0
        self.step_start = time.perf_counter()
        self.opt_start = 0.0
        self.last_forward_end: float | None = None
        self.open: dict[int, tuple[str, float]] = {}
        self.phase_total: dict[str, float] = defaultdict(float)
        self.step_total = 0.0
        self.profiled_steps = 0
        self.profile = None
        self.handles = []

    def _now(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def _active(self) -> bool:
        return self.warmup <= self.step < self.warmup + self.steps

    def install(self) -> None:
        import torch.nn.modules.module as mod
        import torch.optim.optimizer as optim

        self.handles = [
            optim.register_optimizer_step_pre_hook(self._opt_pre),
            optim.register_optimizer_step_post_hook(self._opt_post),
            mod.register_module_forward_pre_hook(self._fwd_pre),
            mod.register_module_forward_hook(self._fwd_post),
        ]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def _fwd_pre(self, module, args) -> None:
        if type(module).__name__ in WATCHED and self._active():
            self.open[id(module)] = (WATCHED[type(module).__name__], self._now())

    def _fwd_post(self, module, args, output) -> None:
        entry = self.open.pop(id(module), None)
        if entry is not None:
            label, start = entry
            self.last_forward_end = self._now()
            self.phase_total[label] += self.last_forward_end - start

    def _opt_pre(self, optimizer, args, kwargs) -> None:
        if self._active():
            self.opt_start = self._now()
            forward_end = self.last_forward_end or self.opt_start
            self.phase_total["backward, loss, grad clipping"] += self.opt_start - forward_end

    def _opt_post(self, optimizer, args, kwargs) -> None:
        import torch

        now = self._now()
        if self._active():
            self.phase_total["optimizer step"] += now - self.opt_start
            self.step_total += now - self.step_start
            self.profiled_steps += 1
        self.step += 1
        if self.step == self.warmup and self.ops:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.cuda:
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profile = torch.profiler.profile(activities=activities, record_shapes=False)
            self.profile.start()
        elif self.step == self.warmup + self.steps and self.profile is not None:
            self.profile.stop()
        self.step_start = self._now()

    def summary(self, top: int) -> str:
        if not self.profiled_steps:
            return "no step was profiled: the job ended before the warm-up was over"
        n = self.profiled_steps
        on = "torch.profiler on" if self.ops else "phase timers only"
        lines = [f"profiled {n} steps; mean step {self.step_total / n * 1000:.1f} ms ({on})", ""]
        lines.append("phase                              ms/step   share")
        accounted = 0.0
        for label, total in sorted(self.phase_total.items(), key=lambda kv: -kv[1]):
            accounted += total
            lines.append(f"{label:<34} {total / n * 1000:8.1f}  {total / self.step_total:6.1%}")
        rest = self.step_total - accounted
        lines.append(f"{'data, noise, rest':<34} {rest / n * 1000:8.1f}  {rest / self.step_total:6.1%}")
        if self.profile is None:
            return "\n".join(lines)
        events = self.profile.key_averages()
        attr = "self_device_time_total" if self.cuda else "self_cpu_time_total"
        by_category: dict[str, float] = defaultdict(float)
        for event in events:
            by_category[category(event.key)] += getattr(event, attr)
        total = sum(by_category.values()) or 1.0
        where = "GPU kernels" if self.cuda else "CPU ops"
        lines += ["", f"op category ({where}, self time)   ms/step   share"]
        for label, value in sorted(by_category.items(), key=lambda kv: -kv[1]):
            lines.append(f"{label:<34} {value / n / 1000:8.1f}  {value / total:6.1%}")
        lines += ["", events.table(sort_by=attr, row_limit=top)]
        if self.trace:
            self.profile.export_chrome_trace(str(self.trace))
            lines.append(f"chrome trace: {self.trace}")
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/profile_step.py", description=__doc__.split("\n")[0])
    p.add_argument("--case", default="tiny-sd1-b4", help=f"one of: {', '.join(ALL_CASES)}")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--warmup", type=int, default=5, help="steps before profiling starts")
    p.add_argument("--steps", type=int, default=5, help="profiled steps")
    p.add_argument("--resolution", type=int, help="override the case's resolution")
    p.add_argument("--top", type=int, default=20, help="rows of the top-ops table")
    p.add_argument("--trace", type=Path, help="also write a chrome://tracing JSON")
    p.add_argument(
        "--phases-only", action="store_true", help="phase timers without torch.profiler's overhead"
    )
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "lora-trainer-bench")
    p.add_argument("--dataset-images", type=int, default=assets.DATASET_IMAGES)
    args = p.parse_args(argv)

    from dataclasses import replace

    case = ALL_CASES[args.case]
    if args.resolution:
        case = replace(case, resolution=args.resolution)
    workdir = args.workdir.resolve()
    model = assets.ensure_checkpoint(workdir, case.arch, case.size)
    data = assets.ensure_dataset(workdir, case.resolution, args.dataset_images)
    run_dir = workdir / "profiles" / f"{case.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    total = args.warmup + args.steps + 1
    spec_dict = ours.spec(case, model, data, run_dir / "output", total, args.device)

    from lib_trainer.spec import spec_from_dict
    from lib_trainer.train.job import run_job

    profiler = StepProfiler(args.warmup, args.steps, args.device == "cuda", args.trace, not args.phases_only)
    profiler.install()
    try:
        code = run_job(spec_from_dict(spec_dict), run_dir / "job")
    finally:
        profiler.remove()
    print(
        f"case {case.name}: {case.arch} {case.size}, {case.resolution} px, batch {case.batch_size}, {args.device}"
    )
    print(json.dumps({k: spec_dict["training"][k] for k in ("batch_size", "resolution", "mixed_precision")}))
    print(profiler.summary(args.top))
    if code != 0:
        print(f"the training job ended with exit code {code}; see {run_dir / 'job' / 'log'}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
