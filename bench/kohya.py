"""kohya sd-scripts' side of a case: the command line of train_network.py / sdxl_train_network.py.

The harness never fetches, installs or builds kohya: it is given a checkout and the Python that runs it.
Targeted at sd-scripts commit 48d368fa557731ad0488c07304dfeba8c07910eb (main, 2026-02-16); every flag used
here exists in that commit's argument parsers (library/train_util.py, train_network.py,
library/sdxl_train_util.py), which `missing_flags` re-checks against the checkout it is given.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from .cases import Case

TARGET_COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"
SCRIPTS = {"sd1": "train_network.py", "sdxl": "sdxl_train_network.py"}
# Where the parsers of these scripts define their flags.
PARSER_FILES = (
    "train_network.py",
    "sdxl_train_network.py",
    "library/train_util.py",
    "library/sdxl_train_util.py",
    "library/config_util.py",
    "library/custom_train_functions.py",
    "library/deepspeed_utils.py",
)


class KohyaError(RuntimeError):
    pass


def script_path(kohya_dir: Path, case: Case) -> Path:
    path = Path(kohya_dir) / SCRIPTS[case.arch]
    if not path.is_file():
        raise KohyaError(f"{path} not found: --kohya-dir must be a checkout of kohya-ss/sd-scripts")
    return path


def notes(case: Case) -> list[str]:
    """What kohya cannot match of a case, or does differently; shown next to its numbers."""
    out = []
    if case.size != "full":
        out.append("kohya: only full-size architectures load (its model configs are fixed)")
    if case.cache_text_encoder_outputs and case.arch == "sdxl":
        out.append("kohya: caches text-encoder outputs (--cache_text_encoder_outputs)")
    elif case.cache_text_encoder_outputs:
        out.append("kohya: no text-encoder output cache for SD1.x LoRA, encodes every step")
    return out


def arguments(
    case: Case,
    model: Path,
    data_dir: Path,
    out_dir: Path,
    tokenizer_dir: Path,
    steps: int,
) -> list[str]:
    """The script's arguments for `case`, matched to ours.spec() setting by setting."""
    args = [
        f"--pretrained_model_name_or_path={model}",
        f"--train_data_dir={data_dir}",  # <repeats>_<name> subfolders, the "DreamBooth method"
        "--caption_extension=.txt",
        f"--resolution={case.resolution},{case.resolution}",  # square images of that size: no bucketing
        f"--output_dir={out_dir}",
        f"--output_name=bench-{case.name}",
        "--save_model_as=safetensors",
        "--save_precision=fp16",
        "--network_module=networks.lora",
        f"--network_dim={case.rank}",
        f"--network_alpha={case.alpha:g}",
        "--network_train_unet_only",
        f"--train_batch_size={case.batch_size}",
        f"--max_train_steps={steps}",
        f"--learning_rate={case.learning_rate:g}",
        "--lr_scheduler=constant",
        f"--optimizer_type={case.optimizer}",
        "--max_grad_norm=1.0",
        f"--mixed_precision={case.mixed_precision}",
        "--sdpa",
        "--cache_latents",  # in memory, as ours (dataset.cache_latents "memory")
        "--no_half_vae",  # our VAE always encodes in fp32
        f"--seed={case.seed}",
        "--max_data_loader_n_workers=0",  # batches are built in the training process, as ours does
        f"--tokenizer_cache_dir={tokenizer_dir}",  # offline: see assets.ensure_kohya_tokenizers
    ]
    if case.gradient_checkpointing:
        args.append("--gradient_checkpointing")
    if case.cache_text_encoder_outputs and case.arch == "sdxl":
        args.append("--cache_text_encoder_outputs")
    return args


def command(python: list[str], probe: Path, script: Path, args: list[str]) -> list[str]:
    """kohya's script under the probe; run it with the kohya checkout as the working directory."""
    return [*python, str(probe), str(script), *args]


def flag_names(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("--")]


def missing_flags(kohya_dir: Path, flags: list[str]) -> list[str]:
    """Flags that no argument parser of the checkout defines (read from the source, kohya is not imported)."""
    text = ""
    for name in PARSER_FILES:
        path = Path(kohya_dir) / name
        if path.is_file():
            text += path.read_text(encoding="utf-8", errors="replace")
    defined = set(re.findall(r"""["'](--[A-Za-z0-9_]+)["']""", text))
    return [f for f in flags if f not in defined]


def commit(kohya_dir: Path) -> str:
    """The checkout's commit, or "unknown" (an exported tree has no .git; pass --kohya-commit then).

    Only a repository whose top is the kohya folder itself counts: an exported copy inside another
    repository (an ignored folder of ours, say) would otherwise report that repository's commit."""
    try:
        out = subprocess.run(
            ["git", "-C", str(kohya_dir), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = out.stdout.splitlines()
    if out.returncode != 0 or len(lines) != 2:
        return "unknown"
    top, value = lines
    if Path(top).resolve() != Path(kohya_dir).resolve():
        return "unknown"
    return value if re.fullmatch(r"[0-9a-f]{40}", value) else "unknown"
