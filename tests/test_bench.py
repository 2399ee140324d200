"""The pure parts of the benchmark harness (bench/): statistics, the probe, command lines, the results file.

No kohya checkout, GPU or training run is needed; the benchmarks themselves are run by hand (see
docs/benchmarks.md) and are not part of the suite's pass/fail.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import assets, flops, kohya, ours, report
from bench.cases import ALL_CASES, CPU_CASES, GPU_CASES, select_cases
from bench.stats import NotEnoughSteps, flop_utilisation, from_probe, quantile, steady_state

REPO = Path(__file__).resolve().parents[1]


def test_steady_state_skips_warmup_and_uses_the_median():
    # two slow warm-up steps, then 0.1 s steps with one 1 s spike (an epoch boundary)
    times = [5.0, 7.0, 8.0, 8.1, 8.2, 9.2, 9.3, 9.4, 9.5]
    stats = steady_state(times, batch_size=4, warmup=2, launch_to_probe_s=0.5)
    assert stats.measured_intervals == 6
    assert stats.median_step_s == pytest.approx(0.1)
    assert stats.it_per_s == pytest.approx(10.0)
    assert stats.images_per_s == pytest.approx(40.0)
    assert stats.mean_step_s == pytest.approx(1.5 / 6)
    assert stats.time_to_first_step_s == pytest.approx(5.5)
    assert stats.steps == 9


def test_steady_state_needs_an_interval_after_warmup():
    with pytest.raises(NotEnoughSteps):
        steady_state([1.0, 2.0, 3.0], batch_size=1, warmup=2)


def test_quantile_interpolates_like_numpy():
    assert quantile([4.0, 1.0, 3.0, 2.0], 0.5) == pytest.approx(2.5)
    assert quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.1) == pytest.approx(1.4)
    assert quantile([7.0], 0.9) == 7.0


def test_from_probe_times_the_first_step_from_the_launch():
    probe = {"launch_time": 100.0, "probe_start_time": 100.25, "step_times": [2.0, 3.0, 4.0, 5.0]}
    stats = from_probe(probe, batch_size=1, warmup=1)
    assert stats.time_to_first_step_s == pytest.approx(2.25)
    assert stats.median_step_s == pytest.approx(1.0)


def test_flop_utilisation_and_peaks():
    assert flop_utilisation(1e12, 2.0, 4e12) == pytest.approx(0.5)
    assert flop_utilisation(None, 2.0, 4e12) is None
    assert flop_utilisation(1e12, 2.0, None) is None
    assert flops.peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert flops.peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert flops.peak_bf16_flops("NVIDIA H200") == 989e12
    assert flops.peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert flops.peak_bf16_flops("NVIDIA GeForce RTX 4090") == 165e12
    assert flops.peak_bf16_flops("NVIDIA L4") == 121e12
    assert flops.peak_bf16_flops("Some Future GPU") is None
    assert flops.peak_bf16_flops("Some Future GPU", override_tflops=100) == 100e12


_PROBED_SCRIPT = """
import sys
import torch

class Wrapper(torch.optim.Optimizer):  # a wrapper whose step calls an inner optimizer's step
    def __init__(self, inner):
        self.inner = inner
        super().__init__(inner.param_groups[0]["params"], {"lr": 0.1})

    def step(self, closure=None):
        self.inner.step()

w = torch.nn.Parameter(torch.ones(3))
plain = torch.optim.SGD([w], lr=0.1)
for _ in range(3):
    w.sum().backward()
    plain.step()
wrapped = Wrapper(torch.optim.SGD([w], lr=0.1))
for _ in range(2):
    w.sum().backward()
    wrapped.step()
print("ran", __name__)
sys.exit(3)
"""


def test_probe_records_each_step_once_and_the_exit_code(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(_PROBED_SCRIPT, encoding="utf-8")
    out = tmp_path / "probe.json"
    env = {"BENCH_PROBE_OUT": str(out), "BENCH_LAUNCH_TIME": "1.5", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "probe.py"), str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr
    assert "ran __main__" in proc.stdout
    data = json.loads(out.read_text())
    assert len(data["step_times"]) == 5  # 3 plain + 2 wrapped, the inner steps not counted twice
    assert data["hook_calls"] == 7
    assert data["step_times"] == sorted(data["step_times"])
    assert data["exit_code"] == 3
    assert data["launch_time"] == 1.5
    assert data["peak_rss_bytes"] > 10 * 2**20
    assert data["cuda"] is None
    assert data["optimizers"] == ["torch.optim.sgd.SGD", "__main__.Wrapper"]


def _fake_kohya(root: Path, flags: list[str]) -> Path:
    """A checkout whose parsers define `flags` (and nothing else)."""
    (root / "library").mkdir(parents=True)
    lines = "\n".join(f'    parser.add_argument("{f}")' for f in flags)
    (root / "library" / "train_util.py").write_text(f"def add(parser):\n{lines}\n", encoding="utf-8")
    for script in kohya.SCRIPTS.values():
        (root / script).write_text("# fake\n", encoding="utf-8")
    return root


def _kohya_args(case_name: str, tmp_path: Path) -> list[str]:
    case = ALL_CASES[case_name]
    return kohya.arguments(
        case, tmp_path / "m.safetensors", tmp_path / "data", tmp_path / "out", tmp_path / "tok", 60
    )


def test_kohya_arguments_match_the_case(tmp_path):
    sd15 = _kohya_args("sd15-b4-8bit", tmp_path)
    for expected in (
        "--network_module=networks.lora",
        "--network_dim=32",
        "--network_alpha=32",
        "--network_train_unet_only",
        "--resolution=512,512",
        "--train_batch_size=4",
        "--max_train_steps=60",
        "--optimizer_type=AdamW8bit",
        "--mixed_precision=bf16",
        "--save_precision=fp16",
        "--sdpa",
        "--cache_latents",
        "--lr_scheduler=constant",
        "--max_data_loader_n_workers=0",
        f"--tokenizer_cache_dir={tmp_path / 'tok'}",
    ):
        assert expected in sd15
    assert "--gradient_checkpointing" not in sd15
    assert "--cache_text_encoder_outputs" not in sd15
    sdxl = _kohya_args("sdxl-b1", tmp_path)
    assert "--resolution=1024,1024" in sdxl
    assert "--gradient_checkpointing" in sdxl and "--cache_text_encoder_outputs" in sdxl
    assert "--cache_text_encoder_outputs" not in _kohya_args("sdxl-b1-te", tmp_path)
    assert any("text-encoder" in n for n in ours.notes(ALL_CASES["sdxl-b1"]))
    assert any("caches text-encoder" in n for n in kohya.notes(ALL_CASES["sdxl-b1"]))


def test_kohya_command_and_flag_check_against_a_fake_checkout(tmp_path):
    args = _kohya_args("sdxl-b1", tmp_path)
    flags = kohya.flag_names(args)
    checkout = _fake_kohya(tmp_path / "sd-scripts", [f for f in flags if f != "--sdpa"])
    assert kohya.missing_flags(checkout, flags) == ["--sdpa"]
    script = kohya.script_path(checkout, ALL_CASES["sdxl-b1"])
    assert script.name == "sdxl_train_network.py"
    command = kohya.command(["/k/python"], ours.PROBE, script, args)
    assert command[:3] == ["/k/python", str(ours.PROBE), str(script)]
    assert command[3:] == args
    assert kohya.commit(checkout) == "unknown"  # not a git checkout
    with pytest.raises(kohya.KohyaError):
        kohya.script_path(tmp_path / "nowhere", ALL_CASES["sd15-b1"])


def test_kohya_commit_is_not_taken_from_an_enclosing_repository(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    inner = tmp_path / "sd-scripts"
    inner.mkdir()
    assert kohya.commit(inner) == "unknown"


def test_our_specs_are_valid_job_specs(tmp_path):
    from lib_trainer.spec import spec_from_dict

    for case in ALL_CASES.values():
        spec = spec_from_dict(
            ours.spec(case, tmp_path / "m.safetensors", tmp_path, tmp_path / "o", 40, "cuda")
        )
        assert spec.network.rank == case.rank and spec.network.alpha == case.alpha
        assert spec.training.batch_size == case.batch_size and spec.training.max_steps == 40
        assert spec.training.optimizer == case.optimizer
        assert spec.training.gradient_checkpointing == case.gradient_checkpointing
        assert spec.dataset.cache_latents == "memory" and not spec.network.train_text_encoder
        assert spec.output.save_every_epochs == 0 and spec.samples.every_epochs == 0
    command = ours.command(["py"], Path("s.json"), Path("j"))
    assert command == ["py", str(ours.PROBE), "-m", "lib_trainer", "train", "s.json", "--job-dir", "j"]


def test_case_selection():
    assert [c.name for c in select_cases(None, "cuda")] == ["sd15-b1", "sd15-b4", "sd15-b4-8bit", "sdxl-b1"]
    assert all(c.size == "tiny" for c in select_cases(None, "cpu"))
    assert select_cases("sd15-b1", "cpu", resolution=256)[0].resolution == 256
    with pytest.raises(ValueError, match="unknown case"):
        select_cases("sd15-b2", "cuda")
    assert set(GPU_CASES).isdisjoint(CPU_CASES)


def _run(status="ok", it_per_s=2.0, vram=4 * 2**30):
    stats = {"it_per_s": it_per_s, "images_per_s": it_per_s * 4, "median_step_s": 1 / it_per_s}
    stats["time_to_first_step_s"] = 30.0
    return {
        "status": status,
        "command": ["python", "x"],
        "cwd": "/",
        "exit_code": 0 if status == "ok" else 1,
        "log": "log.txt",
        "notes": ["a note"],
        "stats": stats if status == "ok" else None,
        "peak_rss_bytes": 2**30,
        "cuda": {"peak_reserved_bytes": vram, "training_peak_reserved_bytes": vram},
        "error": None if status == "ok" else "exit code 1",
        "flop_utilisation": 0.25,
    }


def _results(device="cuda", kohya_run=None):
    runs = {"ours": _run(it_per_s=3.0, vram=3 * 2**30)}
    if kohya_run is not None:
        runs["kohya"] = kohya_run
    case = {"case": ALL_CASES["sd15-b4"].to_dict(), "flops": {"total": 1e12}, "runs": runs}
    case["ratios"] = report.case_ratios(runs)
    side = {"commit": "abc", "python": ["python"], "versions": {"torch": "2.11.0", "python": "3.12.3"}}
    return {
        "schema": report.SCHEMA,
        "created": "now",
        "device": device,
        "device_info": {"gpu": {"name": "NVIDIA H100 80GB HBM3"}, "machine": {"cpu": "x", "cores": 2}},
        "settings": {"steps": 60, "warmup": 10, "dataset_images": 32},
        "ours": side,
        "kohya": dict(side, dir="/k") if kohya_run is not None else None,
        "cases": [case],
    }


def test_results_schema_ratios_and_table(tmp_path):
    results = _results(kohya_run=_run())
    ratios = results["cases"][0]["ratios"]
    assert ratios["it_per_s"] == pytest.approx(1.5)
    assert ratios["peak_vram_reserved"] == pytest.approx(0.75)
    saved = report.save(results, tmp_path / "r.json")
    report.validate(json.loads(saved.read_text()))
    table = report.format_table(results)
    lines = table.splitlines()
    assert lines[0].startswith("| case") and "MFU" in lines[0] and "peak VRAM GiB" in lines[0]
    assert len({len(line) for line in lines}) == 1  # aligned
    assert "| ours/kohya" in table and "1.50x" in table and "0.75x" in table and "25.0%" in table
    assert "NVIDIA H100" in report.format_summary(results)


def test_table_of_a_failed_run_and_a_cpu_run():
    failed = _results(kohya_run=_run(status="failed"))
    assert failed["cases"][0]["ratios"]["it_per_s"] is None
    lines = report.format_table(failed).splitlines()
    assert len({len(line) for line in lines}) == 1
    assert "failed: exit code 1" in lines[-1]
    cpu = _results(device="cpu")
    report.validate(cpu)
    header = report.format_table(cpu).splitlines()[0]
    assert "VRAM" not in header and "MFU" not in header and "peak RSS MiB" in header


def test_validate_rejects_incomplete_results():
    results = _results()
    del results["cases"][0]["runs"]["ours"]["stats"]
    with pytest.raises(report.SchemaError, match="stats"):
        report.validate(results)
    results = _results()
    results["device"] = "tpu"
    with pytest.raises(report.SchemaError):
        report.validate(results)


def test_unet_flops_on_the_meta_device():
    from lib_trainer.models.tiny import _unet

    small = flops.count_step_flops(_unet("sd1", "tiny"), batch=1, resolution=64, rank=4)
    double = flops.count_step_flops(_unet("sd1", "tiny"), batch=2, resolution=64, rank=4)
    assert small["forward"] > 0 and small["backward"] > 0
    assert small["total"] == small["forward"] + small["backward"]
    assert double["total"] == pytest.approx(2 * small["total"], rel=0.01)


def test_dataset_and_kohya_tokenizers(tmp_path):
    from transformers import CLIPTokenizer

    from lib_trainer.models.tokenizers import load_clip_tokenizer

    root = assets.ensure_dataset(tmp_path, resolution=64, count=3)
    images = sorted((root / assets.SUBSET).glob("*.png"))
    assert len(images) == 3 and all(p.with_suffix(".txt").is_file() for p in images)
    assert assets.ensure_dataset(tmp_path, resolution=64, count=3) == root
    folder = assets.ensure_kohya_tokenizers(tmp_path)
    caption = (root / assets.SUBSET / "img_000.txt").read_text().strip()
    for name, exclamation in assets.KOHYA_TOKENIZERS.items():
        theirs = CLIPTokenizer.from_pretrained(str(folder / name))
        mine = load_clip_tokenizer(pad_with_exclamation=exclamation)
        assert theirs(caption).input_ids == mine(caption).input_ids
        assert theirs.pad_token == mine.pad_token and theirs.model_max_length == 77


def test_probe_parses_as_python_38():
    """kohya's Python may be older than ours; the probe runs under it."""
    ast.parse((REPO / "bench" / "probe.py").read_text(), feature_version=(3, 8))


def test_runner_records_fit_the_schema_and_gpu_info_comes_from_the_child():
    from bench import envinfo, run

    record = run.skipped("AdamW8bit needs CUDA", ["a note"], ["python", "x"])
    assert set(report.RUN_KEYS) <= set(record) and record["status"] == "skipped"
    assert envinfo.gpu({"device_name": None}) is None
    info = envinfo.gpu({"device_name": "NVIDIA H200", "device_memory_bytes": 1, "device_capability": "9.0"})
    assert info["name"] == "NVIDIA H200" and info["capability"] == "9.0" and "driver" in info
    busy = {"loadavg_before": (0.1, 0, 0), "loadavg_after": (9.0, 0, 0)}
    assert run.busy_note(busy, "cpu") and not run.busy_note(busy, "cuda")


_FAKE_KOHYA_SCRIPT = """
import sys
import torch

steps = int(next(a for a in sys.argv if a.startswith("--max_train_steps=")).split("=")[1])
w = torch.nn.Parameter(torch.ones(4))
opt = torch.optim.AdamW([w], lr=0.1)
for _ in range(steps):
    w.square().sum().backward()
    opt.step()
    opt.zero_grad()
"""


def test_runner_end_to_end_with_a_fake_kohya(tmp_path, monkeypatch, capsys):
    """run.py's plumbing (relative paths, probe, statistics, table, JSON) without a real trainer."""
    from bench import envinfo, run
    from bench.cases import ALL_CASES

    # each real query starts a Python that imports torch (seconds); the real CPU benchmark runs them
    monkeypatch.setattr(envinfo, "python_versions", lambda python, cwd=None: {"python": "3", "torch": "x"})
    case = ALL_CASES["sd15-b1"]
    arguments = kohya.arguments(case, Path("m"), Path("d"), Path("o"), Path("t"), 12)
    checkout = _fake_kohya(tmp_path / "sd-scripts", kohya.flag_names(arguments))
    (checkout / "train_network.py").write_text(_FAKE_KOHYA_SCRIPT, encoding="utf-8")
    work = tmp_path / "work"
    model = assets.checkpoint_path(work, "sd1", "full")
    model.parent.mkdir(parents=True)
    model.write_bytes(b"not read: --no-flops, and the fake kohya ignores it")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results.json"
    code = run.main(
        ["--device", "cpu", "--cases", "sd15-b1", "--trainers", "kohya", "--kohya-dir", "sd-scripts"]
        + ["--kohya-python", sys.executable, "--steps", "12", "--warmup", "2", "--resolution", "64"]
        + ["--dataset-images", "2", "--no-flops", "--workdir", "work", "--out", str(out)]
    )
    assert code == 0, capsys.readouterr().out
    results = json.loads(out.read_text())
    report.validate(results)
    kohya_run = results["cases"][0]["runs"]["kohya"]
    assert kohya_run["status"] == "ok" and kohya_run["stats"]["steps"] == 12
    assert kohya_run["cwd"] == str(checkout.resolve())
    assert "--resolution=64,64" in kohya_run["command"]
    assert results["kohya"]["commit"] == "unknown" and results["kohya"]["python"] == [sys.executable]
    assert "| sd15-b1 | kohya" in capsys.readouterr().out
