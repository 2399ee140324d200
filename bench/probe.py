"""Run a training script unchanged and time its optimizer steps: the one measurement both trainers share.

Usage: `PYTHON bench/probe.py -m lib_trainer train SPEC.json ...` or `PYTHON bench/probe.py train_network.py ...`
with `BENCH_PROBE_OUT=result.json` in the environment (and optionally `BENCH_LAUNCH_TIME`, the launcher's
`time.time()` just before it started this process).

Both trainers step a `torch.optim.Optimizer` once per training step (kohya through accelerate's
AcceleratedOptimizer, which calls the inner optimizer's `step`; bitsandbytes' 8-bit optimizers are
`torch.optim.Optimizer` subclasses too), so a global step post-hook sees every step of either trainer
without touching their code. A pre-hook counts nesting so that a wrapper optimizer whose `step` calls an
inner optimizer's `step` is recorded once. On CUDA the hook synchronizes before taking the time, so a step
is counted when the GPU has finished it, not when the CPU has queued it.

This file runs under whatever Python runs the trainer (kohya's may differ from ours), so it uses only the
standard library and torch, and keeps to Python 3.8 syntax.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import resource
import runpy
import sys
import time

OUT_ENV = "BENCH_PROBE_OUT"
LAUNCH_ENV = "BENCH_LAUNCH_TIME"

_state = {
    "pid": os.getpid(),
    "probe_start_wall": time.time(),
    "probe_start_perf": time.perf_counter(),
    "launch_time": None,
    "steps": [],  # perf_counter() after each (outermost) optimizer step
    "hook_calls": 0,  # every post-hook call, nested ones included
    "depth": 0,
    "optimizers": [],  # class names of the optimizers that stepped
    "cuda_peak_before_first_step": None,  # setup + caching + first step
    "written": False,
}


def _cuda_ready(torch) -> bool:
    return bool(torch.cuda.is_initialized())  # never initialises CUDA itself


def _pre_hook(optimizer, args, kwargs) -> None:
    _state["depth"] += 1


def _post_hook(optimizer, args, kwargs) -> None:
    import torch

    _state["hook_calls"] += 1
    _state["depth"] = max(0, _state["depth"] - 1)
    if _state["depth"]:
        return  # an inner optimizer inside a wrapper's step: the wrapper's own hook records this step
    if _cuda_ready(torch):
        torch.cuda.synchronize()
    _state["steps"].append(time.perf_counter())
    name = type(optimizer).__module__ + "." + type(optimizer).__qualname__
    if name not in _state["optimizers"]:
        _state["optimizers"].append(name)
    if len(_state["steps"]) == 1 and _cuda_ready(torch):
        # The peak so far includes loading and latent caching; reset so the exit figure is training alone.
        _state["cuda_peak_before_first_step"] = {
            "allocated": torch.cuda.max_memory_allocated(),
            "reserved": torch.cuda.max_memory_reserved(),
        }
        torch.cuda.reset_peak_memory_stats()


def install_hooks() -> None:
    import torch.optim.optimizer as optim

    optim.register_optimizer_step_pre_hook(_pre_hook)
    optim.register_optimizer_step_post_hook(_post_hook)


def result() -> dict:
    """What the probe measured, with step times as seconds since the probe started."""
    start_perf = _state["probe_start_perf"]
    out = {
        "pid": _state["pid"],
        "launch_time": _state["launch_time"],
        "probe_start_time": _state["probe_start_wall"],
        "end_time": time.time(),
        "step_times": [t - start_perf for t in _state["steps"]],
        "hook_calls": _state["hook_calls"],
        "optimizers": _state["optimizers"],
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux: KiB
        "children_peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
        "cuda": None,
    }
    torch = sys.modules.get("torch")
    if torch is not None and _cuda_ready(torch):
        training = {
            "allocated": torch.cuda.max_memory_allocated(),
            "reserved": torch.cuda.max_memory_reserved(),
        }
        before = _state["cuda_peak_before_first_step"] or {"allocated": 0, "reserved": 0}
        out["cuda"] = {
            "device_name": torch.cuda.get_device_name(),
            "peak_allocated_bytes": max(training["allocated"], before["allocated"]),
            "peak_reserved_bytes": max(training["reserved"], before["reserved"]),
            "training_peak_allocated_bytes": training["allocated"],
            "training_peak_reserved_bytes": training["reserved"],
        }
    return out


def write_result(exit_code=None) -> None:
    path = os.environ.get(OUT_ENV)
    if not path or _state["written"] or os.getpid() != _state["pid"]:  # forked data-loader workers: no
        return
    _state["written"] = True
    data = result()
    data["exit_code"] = exit_code
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def _exit_code(exc: SystemExit):
    code = exc.code
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def main(argv: list) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 2
    launch = os.environ.get(LAUNCH_ENV)
    _state["launch_time"] = float(launch) if launch else None
    install_hooks()
    atexit.register(write_result)  # a script that calls sys.exit from a thread or an atexit path
    if argv[0] == "-m":
        if len(argv) < 2:
            print("probe: -m needs a module name", file=sys.stderr)
            return 2
        module, rest = argv[1], argv[2:]
        sys.argv = [module] + rest
        sys.path[0] = os.getcwd()  # as `python -m` does
        runner = functools.partial(runpy.run_module, module, run_name="__main__", alter_sys=True)
    else:
        script, rest = argv[0], argv[1:]
        sys.argv = [script] + rest
        sys.path[0] = os.path.dirname(os.path.abspath(script))  # as `python script.py` does
        runner = functools.partial(runpy.run_path, script, run_name="__main__")
    code = 0
    try:
        runner()
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException:
        write_result(1)
        raise
    write_result(code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
