"""network.learn_trigger: a learnt embedding for the trigger word, trained with the LoRA and bundled into its file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import base_spec
from safetensors.torch import load_file

from lib_trainer.export.bundled_embedding import bundle_tensors, read_bundled_embeddings
from lib_trainer.export.lora_file import summarize_lora
from lib_trainer.models.loader import load_base_model
from lib_trainer.models.tokenizers import load_clip_tokenizer
from lib_trainer.spec import SpecError, spec_from_dict
from lib_trainer.train.conditioning import encode_sd, encode_sdxl, tokenize
from lib_trainer.train.events import read_events
from lib_trainer.train.job import run_job
from lib_trainer.train.trigger_embedding import (
    PLACEHOLDER_TOKEN,
    TriggerEmbedding,
    embedding_steps,
    load_bundled,
    starting_vectors,
    token_ids,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tokenizer():
    return load_clip_tokenizer()


def _embedding(tokenizer, word: str, count: int, width: int = 8) -> TriggerEmbedding:
    return TriggerEmbedding(word, [tokenizer], [torch.randn(count, width)])


# ---------------------------------------------------------------- prompts -> token ids


def test_prompts_without_the_word_tokenize_as_the_tokenizer_does(tokenizer):
    trigger = _embedding(tokenizer, "ohwx", 2)
    captions = ["a red circle on a white background", "", "circle, " * 60]  # the last one is truncated
    ids, slots = trigger.tokenize(0, tokenizer, captions)
    assert torch.equal(ids, tokenize(tokenizer, captions, CPU))
    assert bool((slots == -1).all())


def test_each_occurrence_of_the_word_becomes_the_vectors(tokenizer):
    word = "zorbleflix"  # several BPE tokens: the whole word is replaced, as the WebUI matches an embedding
    word_ids = token_ids(tokenizer, word)
    assert len(word_ids) > 1
    trigger = _embedding(tokenizer, word, 3)
    ids, slots = trigger.tokenize(0, tokenizer, [f"{word} circle, by {word}", "Zorbleflix!"])
    circle = token_ids(tokenizer, "circle, by")
    row = ids[0].tolist()
    assert row[:8] == [tokenizer.bos_token_id, *[PLACEHOLDER_TOKEN] * 3, *circle, PLACEHOLDER_TOKEN]
    assert slots[0, :10].tolist() == [-1, 0, 1, 2, -1, -1, -1, 0, 1, 2]
    assert row[10] == tokenizer.eos_token_id
    # the tokenizer lowercases, so the WebUI finds "Zorbleflix" too
    assert slots[1, 1:4].tolist() == [0, 1, 2]
    assert ids[1, 4].item() == token_ids(tokenizer, "!")[0]


def test_vectors_that_do_not_fit_are_cut_off_with_the_rest(tokenizer):
    trigger = _embedding(tokenizer, "ohwx", 4)
    filler = "circle " * 73  # 73 tokens: 2 places left of 75
    ids, slots = trigger.tokenize(0, tokenizer, [filler + "ohwx square"])
    assert ids.shape == (1, 77)
    assert bool((slots == -1).all()), "a partial embedding would be a different embedding"
    circle = token_ids(tokenizer, "circle")[0]
    assert ids[0, 1:74].tolist() == [circle] * 73
    assert ids[0, 74].item() == tokenizer.eos_token_id  # "square" after the cut is dropped too


# ---------------------------------------------------------------- the text encoder side


@pytest.fixture(scope="module")
def sd1_base(tiny_models):
    base = load_base_model(tiny_models["sd1"])
    for encoder in base.text_encoders:
        encoder.requires_grad_(False)  # frozen, as the trainer holds it
    return base


def test_vectors_equal_to_the_words_own_rows_change_nothing(sd1_base):
    """The splice happens where the WebUI does it (token embeddings, before positions): an embedding made of
    the word's own rows must give exactly the plain conditioning."""
    base = sd1_base
    word = "zorbleflix"
    count = len(token_ids(base.tokenizers[0], word))
    start = starting_vectors(base.text_encoders, base.tokenizers, word, count)
    trigger = TriggerEmbedding(word, base.tokenizers, start)
    trigger.attach(base.text_encoders)
    try:
        captions = [f"{word}, a red circle", "a blue square"]
        with torch.no_grad():
            plain = encode_sd(base.text_encoders[0], base.tokenizers[0], captions, 2, CPU)
            spliced = encode_sd(base.text_encoders[0], base.tokenizers[0], captions, 2, CPU, trigger)
        assert torch.allclose(plain, spliced, atol=1e-6)
        # a one-vector embedding of the same word starts at the mean of its rows: a different conditioning
        mean = TriggerEmbedding(
            word, base.tokenizers, starting_vectors(base.text_encoders, base.tokenizers, word, 1)
        )
        mean.attach(base.text_encoders)
        with torch.no_grad():
            other = encode_sd(base.text_encoders[0], base.tokenizers[0], captions, 2, CPU, mean)
        mean.detach()
        assert not torch.allclose(plain[0], other[0], atol=1e-4)
        assert torch.allclose(plain[1], other[1], atol=1e-6), "a caption without the word must not change"
    finally:
        trigger.detach()


def test_gradients_reach_only_the_offsets_scaled_by_the_step_scale(sd1_base):
    base = sd1_base
    start = starting_vectors(base.text_encoders, base.tokenizers, "ohwx", 2)
    grads = []
    for scale in (1.0, 30.0):
        trigger = TriggerEmbedding("ohwx", base.tokenizers, start, step_scale=scale, trainable=True)
        trigger.attach(base.text_encoders)
        try:
            out = encode_sd(base.text_encoders[0], base.tokenizers[0], ["ohwx circle"], 1, CPU, trigger)
            out.square().sum().backward()
        finally:
            trigger.detach()
        grads.append(trigger.offsets[0].grad)
        assert all(p.grad is None for p in base.text_encoders[0].parameters())
    assert grads[0] is not None and grads[0].abs().sum() > 0
    assert torch.allclose(grads[1], 30.0 * grads[0], rtol=1e-4, atol=1e-6)
    trigger.set_trainable(False)
    assert trigger.offsets[0].grad is None and not trigger.trainable


def test_sdxl_both_encoders_get_their_own_vectors(tiny_models):
    base = load_base_model(tiny_models["sdxl"])
    start = starting_vectors(base.text_encoders, base.tokenizers, "ohwx", 1)
    assert [s.shape[1] for s in start] == [
        e.get_input_embeddings().weight.shape[1] for e in base.text_encoders
    ]
    trigger = TriggerEmbedding("ohwx", base.tokenizers, [s + 1.0 for s in start])
    trigger.attach(base.text_encoders)
    with torch.no_grad():
        plain, pooled = encode_sdxl(base.text_encoders, base.tokenizers, ["ohwx circle"], CPU)
        moved, moved_pooled = encode_sdxl(base.text_encoders, base.tokenizers, ["ohwx circle"], CPU, trigger)
    trigger.detach()
    width = base.text_encoders[0].config.hidden_size
    assert not torch.allclose(plain[..., :width], moved[..., :width])
    assert not torch.allclose(plain[..., width:], moved[..., width:])
    assert not torch.allclose(pooled, moved_pooled)


# ---------------------------------------------------------------- the file layout


def test_bundle_layout_is_the_webuis():
    sd = bundle_tensors("ohwx", [torch.ones(2, 768)], "sd1")
    assert list(sd) == ["bundle_emb.ohwx.string_to_param.*"]
    xl = bundle_tensors("ohwx", [torch.ones(1, 768), torch.zeros(1, 1280)], "sdxl")
    assert sorted(xl) == ["bundle_emb.ohwx.clip_g", "bundle_emb.ohwx.clip_l"]
    found = read_bundled_embeddings({**xl, "lora_unet_x.alpha": torch.tensor(1.0)})
    assert list(found) == ["ohwx"] and [v.shape[1] for v in found["ohwx"]] == [768, 1280]
    with pytest.raises(ValueError, match="dot"):
        bundle_tensors("oh.wx", [torch.ones(1, 768)], "sd1")
    with pytest.raises(ValueError, match="not an SD or SDXL layout"):
        read_bundled_embeddings({"bundle_emb.ohwx.clip_l": torch.ones(1, 768)})


def test_embedding_steps():
    assert embedding_steps(1.0, 800) == 800
    assert embedding_steps(0.5, 801) == 401
    assert embedding_steps(0.001, 10) == 1


# ---------------------------------------------------------------- training end to end


def _run(spec: dict, job_dir: Path, **kwargs) -> tuple[int, list[dict]]:
    code = run_job(spec_from_dict(spec), job_dir, **kwargs)
    return code, read_events(job_dir / "events.jsonl")


def _learn(**network) -> dict:
    return {"learn_trigger": True, "trigger_vectors": 2, **network}


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_training_bundles_the_learnt_embedding(tmp_path, tiny_models, tiny_dataset, family):
    out = tmp_path / "Lora"
    spec = base_spec(
        tiny_models[family],
        tiny_dataset,
        out,
        network=_learn(trigger_train_fraction=0.5),
        samples={"every_epochs": 2, "prompts": [{"prompt": "{trigger} circle", "seed": 3, "steps": 2}]},
    )
    code, events = _run(spec, tmp_path / "job")
    assert code == 0, [e for e in events if e["type"] == "error"]
    assert any("learning the trigger word" in e.get("message", "") for e in events)
    assert "sample" in [e["type"] for e in events]
    final, first = load_file(str(out / "t.safetensors")), load_file(str(out / "t-000001.safetensors"))
    bundled = read_bundled_embeddings(final)
    assert list(bundled) == ["sks"]
    base = load_base_model(tiny_models[family])
    start = starting_vectors(base.text_encoders, base.tokenizers, "sks", 2)
    for vectors, begin in zip(bundled["sks"], start, strict=True):
        assert vectors.shape == begin.shape
        assert not torch.allclose(vectors.float(), begin, atol=1e-4), "the embedding did not train"
    # trained for the first half (epoch 1) only: epoch 2 left it where epoch 1 did
    for key in [k for k in final if k.startswith("bundle_emb.")]:
        assert torch.equal(final[key], first[key]), key
    summary = summarize_lora(out / "t.safetensors")
    assert summary["bundled_embeddings"] == {"sks": 2} and summary["other_keys"] == 0
    assert json.loads((out / "t.json").read_text())["activation text"] == "sks"


def test_a_loaded_file_conditions_prompts_like_the_trainer(tmp_path, tiny_models, tiny_dataset):
    """The vectors in the file (fp32 here) are the trainer's own: a base with the file's embedding encodes
    the trigger prompt exactly as the trainer's state does."""
    out = tmp_path / "Lora"
    spec = base_spec(tiny_models["sd1"], tiny_dataset, out, network=_learn(), training={"epochs": 1})
    code, _ = _run(spec, tmp_path / "job")
    assert code == 0
    state = load_file(str(tmp_path / "job" / "state" / "lora.safetensors"))
    base = load_base_model(tiny_models["sd1"])
    start = starting_vectors(base.text_encoders, base.tokenizers, "sks", 2)
    expected = start[0] + 30.0 * state["trigger/te0"]
    trigger = load_bundled(base, load_file(str(out / "t.safetensors")))
    assert trigger is not None and base.trigger_embedding is trigger and trigger.word == "sks"
    assert torch.allclose(trigger.vectors(0), expected, atol=1e-6)
    with torch.no_grad():
        a = encode_sd(base.text_encoders[0], base.tokenizers[0], ["sks circle"], 1, CPU, trigger)
        b = encode_sd(base.text_encoders[0], base.tokenizers[0], ["sks circle"], 1, CPU)
    assert not torch.allclose(a, b, atol=1e-4)


# resuming a job with a learnt trigger word: tests/test_train_e2e.py::test_resume_gives_the_same_lora


# ---------------------------------------------------------------- what the user can get wrong


def _errors(spec: dict) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        spec_from_dict(spec)
    return dict(info.value.errors)


def test_spec_refuses_what_cannot_work(tmp_path):
    spec = base_spec(tmp_path / "m.safetensors", tmp_path, tmp_path / "out", network=_learn())
    spec["dataset"]["trigger_word"] = ""
    assert "network.learn_trigger is on" in _errors(spec)["dataset.trigger_word"]
    spec["dataset"]["trigger_word"] = "my.char"
    assert "without one" in _errors(spec)["dataset.trigger_word"]
    spec["dataset"]["trigger_word"] = "sks"
    spec["mode"] = "dreambooth"
    spec["dreambooth"] = {"class_prompt": "a dog"}
    assert "inside the LoRA file" in _errors(spec)["network.learn_trigger"]


def test_captions_without_the_word_are_refused_or_named(tmp_path, tiny_models, tiny_dataset):
    spec = base_spec(tiny_models["sd1"], tiny_dataset, tmp_path / "out", network=_learn())
    spec["dataset"]["trigger_word"] = "ohwx"  # the tiny dataset's captions say "sks"
    code, events = _run(spec, tmp_path / "job")
    assert code == 2
    assert 'the trigger word "ohwx" is not in any caption' in events[-1]["message"]
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())

    data = tmp_path / "data"
    subset = next(p for p in tiny_dataset.iterdir() if p.is_dir())
    (data / subset.name).mkdir(parents=True)
    for i, image in enumerate(sorted(subset.glob("*.png"))):
        (data / subset.name / image.name).write_bytes(image.read_bytes())
        caption = "sks, a circle" if i else "a circle"
        (data / subset.name / image.with_suffix(".txt").name).write_text(caption, encoding="utf-8")
    spec = base_spec(tiny_models["sd1"], data, tmp_path / "out2", network=_learn(), training={"epochs": 1})
    code, events = _run(spec, tmp_path / "job2")
    assert code == 0
    warnings = [e["message"] for e in events if e["type"] == "warning"]
    assert any('1 caption(s) do not contain the trigger word "sks"' in w for w in warnings), warnings
