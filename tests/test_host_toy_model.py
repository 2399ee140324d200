"""The quality tests' toy base model and a toy LoRA in a real AUTOMATIC1111 WebUI (v1.10.x): they draw what they
draw through the trainer's own sampling path.

The quality tests guard our sampler, noise schedule, latent scale and text path by what the toy base model draws
through the trainer's pipeline, and judge each LoRA as it comes back from its kohya file (tests/quality). Here the
WebUI loads the same committed single file the way it loads a checkpoint its built-in configs do not describe: a
config file of the same name beside it, which here states the toy widths and points the text encoder at a folder
holding its config and the CLIP tokenizer. It draws the same probes with its own sampler (Euler a, 20 steps,
CFG 7, the quality tests' settings), and the toy judge must find the prompted shape and colour at the quality
tests' thresholds, and neither held-out concept.

Then the quality tests' plain subject LoRA (the Train tab's default preset, 2400 steps), trained by the trainer
while the WebUI starts, is drawn by the WebUI with `<lora:...>` in the prompt: it must judge as the quality tests
judge the file, and the WebUI's Lora loader must place every module. The toy UNet has one ResNet per level, and
A1111 decodes a diffusers-named SD1 module with SD's two-per-level arithmetic, so the exporter names such a
UNet's modules by their LDM paths (lib_trainer/export/kohya_keys.py); with diffusers names the WebUI drew the
subject for 19 % of the trigger prompts where the quality tests find 69 % (docs/quality.md, "The toy model in a
real WebUI").

Opt-in (marker ``host``), skipped unless ``SD_WEBUI_DIR`` is set (see ``host_support.py``). About 8 minutes on
a 2-core CPU, most of it training.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch
from host_support import (
    Host,
    host_paths,
    log_problems,
    request,
    start_webui,
    stop,
    txt2img_payload,
    wait_for_api,
)
from PIL import Image

pytestmark = pytest.mark.host

WEBUI_DIR, HOST_PYTHON = host_paths("the toy model in the WebUI")
LORA_NAME = "toy-subject"
LORA_MARGIN = 0.1
"""How far the WebUI's judged shares may be from the quality tests' for the same LoRA file (measured: equal)."""


def ldm_config(clip_dir: Path) -> dict:
    """The WebUI's (ldm's) config of the toy model, derived from the configs it was built with
    (tests/quality/toy_model.py), in the layout of the WebUI's own configs/v1-inference.yaml."""
    from lib_trainer.train.noise import make_noise_scheduler
    from tests.quality import toy_model as toy

    unet, vae = toy.UNET_CONFIG, toy.VAE_CONFIG
    base = unet["block_out_channels"][0]
    schedule = make_noise_scheduler("epsilon").config
    assert schedule.beta_schedule == "scaled_linear", schedule  # ldm's "linear" is diffusers' scaled_linear
    return {
        "model": {
            "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
            "params": {
                "linear_start": schedule.beta_start,
                "linear_end": schedule.beta_end,
                "num_timesteps_cond": 1,
                "timesteps": schedule.num_train_timesteps,
                "first_stage_key": "jpg",
                "cond_stage_key": "txt",
                "image_size": toy.IMAGE_SIZE // 8,
                "channels": vae["latent_channels"],
                "cond_stage_trainable": False,
                "conditioning_key": "crossattn",
                "scale_factor": toy.SCALING_FACTOR,
                "use_ema": False,
                "unet_config": {
                    "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                    "params": {
                        "image_size": 32,
                        "in_channels": 4,
                        "out_channels": 4,
                        "model_channels": base,
                        # ldm counts levels by downsampling factor: attention where a level has cross-attention
                        "attention_resolutions": [
                            2**level
                            for level, kind in enumerate(unet["down_block_types"])
                            if kind.startswith("CrossAttn")
                        ],
                        "num_res_blocks": unet["layers_per_block"],
                        "channel_mult": [c // base for c in unet["block_out_channels"]],
                        # diffusers' SD1 configs name the head count attention_head_dim
                        "num_heads": unet["attention_head_dim"],
                        "use_spatial_transformer": True,
                        "transformer_depth": 1,
                        "context_dim": unet["cross_attention_dim"],
                        "use_checkpoint": False,
                        "legacy": False,
                    },
                },
                "first_stage_config": {
                    "target": "ldm.models.autoencoder.AutoencoderKL",
                    "params": {
                        "embed_dim": vae["latent_channels"],
                        "ddconfig": {
                            "double_z": True,
                            "z_channels": vae["latent_channels"],
                            "resolution": toy.IMAGE_SIZE,
                            "in_channels": 3,
                            "out_ch": 3,
                            "ch": vae["block_out_channels"][0],
                            "ch_mult": [c // vae["block_out_channels"][0] for c in vae["block_out_channels"]],
                            "num_res_blocks": vae["layers_per_block"],
                            "attn_resolutions": [],
                            "dropout": 0.0,
                        },
                        "lossconfig": {"target": "torch.nn.Identity"},
                    },
                },
                "cond_stage_config": {
                    "target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
                    "params": {"version": str(clip_dir)},
                },
            },
        }
    }


def write_clip_folder(folder: Path) -> Path:
    """The toy text encoder's config and the CLIP tokenizer's files, as the WebUI's transformers (4.30, the
    slow CLIPTokenizer: vocab.json and merges.txt) reads them offline with `from_pretrained(folder)`."""
    from transformers import CLIPTextConfig

    from lib_trainer.models.tokenizers import BOS, EOS, build_vocab, read_merges
    from tests.quality import toy_model as toy

    CLIPTextConfig(**toy.TEXT_ENCODER_CONFIG).save_pretrained(folder)
    merges = read_merges()
    (folder / "vocab.json").write_text(json.dumps(build_vocab(merges)), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(special), encoding="utf-8")
    config = {**special, "model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("host-toy")


@pytest.fixture(scope="module")
def training(root: Path):
    """The quality tests' plain subject job in a trainer process of its own (one thread: the WebUI has the
    other core), started before the WebUI so that it trains while the WebUI starts and draws the base model."""
    from tests.quality import scores
    from tests.quality.training_pool import TrainingPool

    pool = TrainingPool(slots=1)
    job = scores.subject_job(root / "subject", LORA_NAME, "lora", **scores.PLAIN_SUBJECT)
    pool.submit(LORA_NAME, job, root / "subject" / "job")
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def host(root: Path, training) -> Iterator[Host]:
    import yaml

    from tests.quality.toy_model import TOY_MODEL_FILE

    ckpt_dir = root / "models" / "Stable-diffusion"
    ckpt_dir.mkdir(parents=True)
    checkpoint = ckpt_dir / TOY_MODEL_FILE.name
    checkpoint.symlink_to(TOY_MODEL_FILE)
    clip_dir = write_clip_folder(root / "toy-clip")
    # A1111 reads a config file named like the checkpoint before guessing one from the tensors
    checkpoint.with_suffix(".yaml").write_text(yaml.safe_dump(ldm_config(clip_dir)), encoding="utf-8")
    data_dir = root / "webui-data"
    data_dir.mkdir()
    lora_dir = root / "models" / "Lora"
    lora_dir.mkdir()
    args = ["--ckpt-dir", str(ckpt_dir), "--ckpt", str(checkpoint), "--lora-dir", str(lora_dir)]
    host = start_webui(WEBUI_DIR, HOST_PYTHON, data_dir, root / "webui.log", args)
    try:
        wait_for_api(host, checkpoint)
        yield host
    finally:
        stop(host.process)


def webui_drawer(host: Host, lora: str | None = None):
    """`harness.Draw` through the WebUI's txt2img, with `<lora:NAME:1>` in every prompt if a LoRA is named: one
    request per prompt, its seeds as one batch (the WebUI seeds a batch seed, seed + 1, ...; every probe set's
    seeds are consecutive)."""
    from tests.quality import harness as h

    def draw(prompts: Sequence[str], seeds: Sequence[int]) -> list[Image.Image]:
        assert list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))), seeds
        pictures = []
        for prompt in prompts:
            payload = {
                **txt2img_payload(f"{prompt} <lora:{lora}:1>" if lora else prompt),
                "seed": seeds[0],
                "sampler_name": "Euler a",
                "steps": h.SAMPLE_STEPS,
                "cfg_scale": h.CFG_SCALE,
                "width": h.IMAGE_SIZE,
                "height": h.IMAGE_SIZE,
                "batch_size": len(seeds),
            }
            answer = request(f"{host.url}/sdapi/v1/txt2img", payload)
            assert json.loads(answer["info"])["all_seeds"] == list(seeds), answer["info"]
            assert len(answer["images"]) == len(seeds), "the API returned a grid or too few pictures"
            pictures += [Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB") for b in answer["images"]]
        return pictures

    return draw


def test_the_webui_draws_the_toy_base_model_as_the_trainer_does(host: Host) -> None:
    from tests.quality import scores
    from tests.quality.judge import load_judge

    measured = scores.score_model(webui_drawer(host), load_judge(), with_style=True)
    print(f"the toy base model drawn by the WebUI: {measured}")  # shown with -rA or -s
    assert measured.known_shape >= scores.BASE_MIN_SHAPE, measured
    assert measured.known_colour >= scores.BASE_MIN_COLOUR, measured
    assert measured.trigger_subject <= 0.1, measured
    assert measured.style_striped <= 0.1, measured


def test_the_webui_draws_a_toy_lora_as_the_quality_tests_judge_it(host: Host, root: Path, training) -> None:
    from tests.quality import harness as h
    from tests.quality import scores
    from tests.quality.judge import load_judge

    trained = training.result(LORA_NAME)
    shutil.copyfile(trained.final, root / "models" / "Lora" / f"{LORA_NAME}.safetensors")
    request(f"{host.url}/sdapi/v1/refresh-loras", {})
    judge = load_judge()
    webui = scores.score_model(webui_drawer(host, LORA_NAME), judge)
    with torch.no_grad():
        ours = scores.score_model(h.with_lora(trained.final), judge)
    print(f"the toy subject LoRA drawn by the WebUI: {webui}; by the quality tests' path: {ours}")
    problems = [line for line in log_problems(host.log.read_text(errors="replace")) if LORA_NAME in line]
    assert not problems, "\n".join(line[:600] for line in problems)  # a line lists every unmatched key
    for share in ("trigger_subject", "trigger_colour", "class_subject", "known_correct", "known_subject"):
        assert abs(getattr(webui, share) - getattr(ours, share)) <= LORA_MARGIN, (share, webui, ours)
    assert webui.trigger_subject >= scores.SUBJECT_MIN, webui  # the LoRA took effect at all
