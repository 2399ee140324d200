"""Optimizers and LR schedulers: construction, user-facing errors, curve shapes and exact resume."""

from __future__ import annotations

import io
import logging
import math
import sys

import pytest
import torch

from lib_trainer.train import optimizers
from lib_trainer.train.optimizers import (
    OPTIMIZERS,
    TrainingConfigError,
    _has_fused_cpu_adamw,
    build_optimizer,
    describe_optimizer,
    optimizer_warnings,
)
from lib_trainer.train.schedulers import SCHEDULERS, build_scheduler, resolve_warmup_steps

CPU_OPTIMIZERS = {"AdamW": 0.1, "Prodigy": 1.0, "Adafactor": 0.1}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _groups(*lrs: float, size: int = 8, device: str = "cpu") -> list[dict]:
    torch.manual_seed(0)
    return [{"params": [torch.nn.Parameter(torch.randn(size, device=device))], "lr": lr} for lr in lrs]


def _quadratic(groups: list[dict]) -> torch.Tensor:
    return sum(((p - 3.0) ** 2).sum() for g in groups for p in g["params"])


def _train(optimizer, groups, steps: int, scheduler=None) -> list[float]:
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = _quadratic(groups)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    return losses


def _roundtrip(state: dict) -> dict:
    """What the runner does: torch.save then torch.load(weights_only=True)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# --- optimizers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*CPU_OPTIMIZERS, "adamw", "PRODIGY", " adafactor "])
def test_builds_on_cpu_case_insensitively(name):
    lr = CPU_OPTIMIZERS.get(name.strip().title().replace("Adamw", "AdamW"), 1.0)
    opt = build_optimizer(name, _groups(lr), lr=lr, device_type="cpu")
    assert isinstance(opt, torch.optim.Optimizer)
    assert type(opt).__name__.lower() == name.strip().lower()


@pytest.mark.parametrize("name", list(CPU_OPTIMIZERS))
def test_few_steps_reduce_a_quadratic(name):
    lr = CPU_OPTIMIZERS[name]
    groups = _groups(lr)
    opt = build_optimizer(name, groups, lr=lr, device_type="cpu")
    # Prodigy's warm-up safeguard with bias correction (its diffusion defaults) grows its step size from
    # d0 = 1e-6 slowly at first: ~60 steps go by before it moves, it converges well within 200.
    losses = _train(opt, groups, 200 if name == "Prodigy" else 60)
    assert losses[-1] < 0.5 * losses[0], losses[::10]


def test_adamw_defaults_and_description():
    opt = build_optimizer("AdamW", _groups(1e-4), lr=1e-4, device_type="cpu")
    assert opt.defaults["weight_decay"] == 0.01
    assert opt.defaults["betas"] == (0.9, 0.999)
    # torch 2.4 and later have a fused CPU kernel; it is chosen by default like the CUDA one
    assert opt.defaults["fused"] is _has_fused_cpu_adamw()
    assert describe_optimizer(opt) == "torch.optim.adamw.AdamW(weight_decay=0.01)"


def test_adamw_fused_kernel_matches_the_loop_on_cpu():
    """The fused default must train exactly as the plain loop would (same steps, float tolerance)."""
    if not _has_fused_cpu_adamw():
        pytest.skip("torch before 2.4 has no fused CPU AdamW")
    groups_loop, groups_fused = _groups(1e-2), _groups(1e-2)
    loop = build_optimizer("AdamW", groups_loop, lr=1e-2, device_type="cpu", extra_args={"foreach": False})
    fused = build_optimizer("AdamW", groups_fused, lr=1e-2, device_type="cpu")
    assert fused.defaults["fused"] is True and not loop.defaults["fused"]
    assert _train(loop, groups_loop, 20) == pytest.approx(_train(fused, groups_fused, 20), rel=1e-5)


def test_adamw_is_not_fused_for_an_older_torch(monkeypatch):
    monkeypatch.setattr(optimizers, "_has_fused_cpu_adamw", lambda: False)
    opt = build_optimizer("AdamW", _groups(1e-4), lr=1e-4, device_type="cpu")
    assert not opt.defaults["fused"]


def test_param_group_lrs_are_kept_and_generators_accepted():
    params = [torch.nn.Parameter(torch.zeros(3)) for _ in range(3)]
    groups = [{"params": iter(params[:2]), "lr": 1e-4}, {"params": (p for p in params[2:]), "lr": 5e-5}]
    opt = build_optimizer("AdamW", groups, lr=1e-4, device_type="cpu")
    assert [len(g["params"]) for g in opt.param_groups] == [2, 1]
    assert [g["lr"] for g in opt.param_groups] == [1e-4, 5e-5]


def test_adafactor_follows_the_explicit_learning_rate():
    groups = _groups(0.1)
    opt = build_optimizer("Adafactor", groups, lr=0.1, device_type="cpu")
    assert opt.defaults["relative_step"] is False
    assert opt.defaults["scale_parameter"] is False
    assert opt.defaults["warmup_init"] is False
    assert describe_optimizer(opt) == (
        "transformers.optimization.Adafactor(relative_step=False,scale_parameter=False,warmup_init=False)"
    )
    opt.param_groups[0]["lr"] = 0.0  # as a scheduler at warmup step 0 would set it
    before = groups[0]["params"][0].detach().clone()
    _train(opt, groups, 2)
    assert torch.equal(groups[0]["params"][0], before)


def test_adamw8bit_on_cpu_names_the_field_before_touching_bitsandbytes(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # importing it would fail with another message
    with pytest.raises(TrainingConfigError) as err:
        build_optimizer("adamw8bit", _groups(1e-4), lr=1e-4, device_type="cpu")
    assert err.value.field == "training.optimizer"
    assert "NVIDIA GPU" in str(err.value) and "Use AdamW on CPU" in str(err.value)
    assert str(err.value).startswith("training.optimizer: ")


def test_adamw8bit_unloadable_bitsandbytes_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(TrainingConfigError, match="bitsandbytes") as err:
        build_optimizer("AdamW8bit", _groups(1e-4), lr=1e-4, device_type="cuda")
    assert err.value.field == "training.optimizer"


@needs_cuda
def test_adamw8bit_on_cuda_trains():
    groups = _groups(0.1, size=8192, device="cuda")  # above bitsandbytes' 4096-element 8-bit threshold
    opt = build_optimizer("AdamW8bit", groups, lr=0.1, device_type="cuda")
    assert type(opt).__name__ == "AdamW8bit"
    losses = _train(opt, groups, 30)
    assert losses[-1] < 0.5 * losses[0]


@needs_cuda
def test_adamw_is_fused_on_cuda():
    opt = build_optimizer("AdamW", _groups(1e-3, device="cuda"), lr=1e-3, device_type="cuda")
    assert opt.defaults["fused"] is True
    assert "fused" not in describe_optimizer(opt)


def test_unknown_optimizer_lists_the_choices():
    with pytest.raises(TrainingConfigError) as err:
        build_optimizer("Lion", _groups(1e-4), lr=1e-4, device_type="cpu")
    assert err.value.field == "training.optimizer"
    assert all(name in str(err.value) for name in OPTIMIZERS)


def test_unknown_extra_arg_names_the_key_and_lists_allowed():
    with pytest.raises(TrainingConfigError) as err:
        build_optimizer("AdamW", _groups(1e-4), lr=1e-4, device_type="cpu", extra_args={"decay": 0.1})
    assert err.value.field == "training.optimizer_args.decay"
    assert "weight_decay" in str(err.value) and "betas" in str(err.value)


def test_lr_in_extra_args_points_to_learning_rate():
    with pytest.raises(TrainingConfigError, match=r"training\.learning_rate") as err:
        build_optimizer("AdamW", _groups(1e-4), lr=1e-4, device_type="cpu", extra_args={"lr": 1e-3})
    assert err.value.field == "training.optimizer_args.lr"


def test_extra_args_are_applied_and_coerced():
    opt = build_optimizer(
        "AdamW",
        _groups(1e-4),
        lr=1e-4,
        device_type="cpu",
        extra_args={"weight_decay": "0.1", "betas": [0.9, 0.99]},
    )
    assert opt.defaults["weight_decay"] == 0.1
    assert opt.defaults["betas"] == (0.9, 0.99)
    assert describe_optimizer(opt) == "torch.optim.adamw.AdamW(weight_decay=0.1,betas=(0.9, 0.99))"
    prodigy = build_optimizer("Prodigy", _groups(1.0), lr=1.0, device_type="cpu", extra_args={"d_coef": 0.5})
    assert prodigy.defaults["d_coef"] == 0.5
    assert describe_optimizer(prodigy) == (
        "prodigyopt.prodigy.Prodigy(use_bias_correction=True,safeguard_warmup=True,weight_decay=0.01,d_coef=0.5)"
    )


def test_prodigy_uses_the_diffusion_settings_its_authors_recommend_unless_the_user_sets_them():
    prodigy = build_optimizer("Prodigy", _groups(1.0), lr=1.0, device_type="cpu")
    assert prodigy.defaults["use_bias_correction"] is True
    assert prodigy.defaults["safeguard_warmup"] is True
    assert prodigy.defaults["weight_decay"] == 0.01
    mine = build_optimizer(
        "Prodigy",
        _groups(1.0),
        lr=1.0,
        device_type="cpu",
        extra_args={"safeguard_warmup": False, "weight_decay": 0},
    )
    assert mine.defaults["safeguard_warmup"] is False
    assert mine.defaults["weight_decay"] == 0
    assert mine.defaults["use_bias_correction"] is True


def test_extra_arg_value_rejected_by_the_optimizer_is_a_config_error():
    with pytest.raises(TrainingConfigError, match="AdamW rejected") as err:
        build_optimizer("AdamW", _groups(1e-4), lr=1e-4, device_type="cpu", extra_args={"betas": [2.0, 0.9]})
    assert err.value.field == "training.optimizer_args"


def test_adafactor_relative_step_is_refused():
    with pytest.raises(TrainingConfigError, match="must stay False") as err:
        build_optimizer(
            "Adafactor", _groups(0.1), lr=0.1, device_type="cpu", extra_args={"relative_step": True}
        )
    assert err.value.field == "training.optimizer_args.relative_step"


def test_prodigy_low_learning_rate_warns(caplog):
    assert optimizer_warnings("Prodigy", 1.0) == []
    assert optimizer_warnings("AdamW", 1e-4) == []
    with caplog.at_level(logging.WARNING, logger="lib_trainer.train.optimizers"):
        build_optimizer("Prodigy", _groups(1e-4), lr=1e-4, device_type="cpu")
    assert "Prodigy normally uses learning_rate 1.0" in caplog.text


def test_prodigy_refuses_a_separate_text_encoder_lr():
    with pytest.raises(TrainingConfigError) as err:
        build_optimizer("Prodigy", _groups(1.0, 0.5), lr=1.0, device_type="cpu")
    assert err.value.field == "training.text_encoder_lr"
    build_optimizer("Prodigy", _groups(1.0, 1.0, 0.0), lr=1.0, device_type="cpu")  # equal or frozen is fine


def test_learning_rate_must_be_positive():
    with pytest.raises(TrainingConfigError) as err:
        build_optimizer("AdamW", _groups(0.0), lr=0.0, device_type="cpu")
    assert err.value.field == "training.learning_rate"


# --- schedulers -------------------------------------------------------------------------------------------


def _curve(name: str, total: int = 100, warmup: int = 0, **kw) -> list[float]:
    groups = _groups(1.0)
    opt = build_optimizer("AdamW", groups, lr=1.0, device_type="cpu")
    sched = build_scheduler(name, opt, total_steps=total, warmup_steps=warmup, **kw)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_constant_is_flat():
    assert set(_curve("constant")) == {1.0}


@pytest.mark.parametrize(
    "name", ["constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"]
)
def test_warmup_ramps_linearly(name):
    lrs = _curve(name, warmup=10)
    assert lrs[0] == 0.0
    assert lrs[:11] == pytest.approx([i / 10 for i in range(11)])


def test_constant_with_warmup_setting_still_warms_up():
    lrs = _curve("constant", warmup=10)
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5) and lrs[10:] == [1.0] * 90


def test_linear_decays_to_zero():
    lrs = _curve("linear")
    assert lrs[50] == pytest.approx(0.5)
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[-1] == pytest.approx(0.01)


def test_cosine_ends_near_zero():
    lrs = _curve("cosine")
    assert lrs[50] == pytest.approx(0.5)
    assert lrs[-1] < 0.01
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_cosine_with_restarts_goes_back_up():
    lrs = _curve("cosine_with_restarts", num_cycles=2)
    jumps = [i for i in range(1, len(lrs)) if lrs[i] > lrs[i - 1] + 0.5]
    assert jumps == [50]
    assert lrs[49] < 0.01 and lrs[50] == 1.0 and lrs[-1] < 0.01
    assert lrs[:50] == pytest.approx(_curve("cosine_with_restarts", num_cycles=2.0)[50:])  # JSON 2.0 is fine


def test_polynomial_power():
    lrs = _curve("polynomial", power=2.0)
    assert lrs[50] == pytest.approx(0.25, abs=1e-6)
    assert lrs[-1] == pytest.approx(1e-4, abs=1e-6)
    assert _curve("polynomial", power=1.0) == pytest.approx(_curve("linear"), abs=1e-6)


def test_unknown_scheduler_lists_the_choices():
    opt = build_optimizer("AdamW", _groups(1.0), lr=1.0, device_type="cpu")
    with pytest.raises(TrainingConfigError) as err:
        build_scheduler("adafactor", opt, total_steps=10, warmup_steps=0)
    assert err.value.field == "training.lr_scheduler"
    assert all(name in str(err.value) for name in SCHEDULERS)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"warmup_steps": 10}, "training.lr_warmup_steps"),
        ({"warmup_steps": 3, "num_cycles": 0}, "training.lr_scheduler_num_cycles"),
    ],
)
def test_scheduler_setting_errors(kwargs, field):
    opt = build_optimizer("AdamW", _groups(1.0), lr=1.0, device_type="cpu")
    with pytest.raises(TrainingConfigError) as err:
        build_scheduler("cosine_with_restarts", opt, total_steps=10, **kwargs)
    assert err.value.field == field


def test_resolve_warmup_steps():
    assert resolve_warmup_steps(10, 200) == 10
    assert resolve_warmup_steps(0.1, 200) == 20
    assert resolve_warmup_steps(0.0, 200) == 0
    assert resolve_warmup_steps(100.0, 200) == 100
    assert resolve_warmup_steps("5%", 200) == 10
    assert resolve_warmup_steps("30", 200) == 30
    for bad in (1.5, -1, True, "lots"):
        with pytest.raises(TrainingConfigError) as err:
            resolve_warmup_steps(bad, 200)
        assert err.value.field == "training.lr_warmup_steps"


@pytest.mark.parametrize("scheduler", ["cosine_with_restarts", "polynomial", "linear"])
@pytest.mark.parametrize("name", list(CPU_OPTIMIZERS))
def test_resume_from_state_dicts_is_exact(name, scheduler):
    """Stopping at step 13 and resuming from saved state must replay the uninterrupted run bit for bit."""
    lr, total, stop = CPU_OPTIMIZERS[name], 40, 13

    def make():
        groups = _groups(lr, lr if name == "Prodigy" else lr / 2)
        opt = build_optimizer(name, groups, lr=lr, device_type="cpu")
        sched = build_scheduler(scheduler, opt, total_steps=total, warmup_steps=5, num_cycles=2, power=2.0)
        return groups, opt, sched

    groups, opt, sched = make()
    _train(opt, groups, total, sched)
    straight = [p.detach().clone() for g in groups for p in g["params"]]
    straight_lr = sched.get_last_lr()

    groups, opt, sched = make()
    _train(opt, groups, stop, sched)
    saved = [p.detach().clone() for g in groups for p in g["params"]]
    opt_state, sched_state = _roundtrip(opt.state_dict()), _roundtrip(sched.state_dict())
    expected_lrs = [g["lr"] for g in opt.param_groups]

    groups, opt, sched = make()
    with torch.no_grad():
        for p, s in zip((p for g in groups for p in g["params"]), saved, strict=True):
            p.copy_(s)
    opt.load_state_dict(opt_state)
    sched.load_state_dict(sched_state)
    assert [g["lr"] for g in opt.param_groups] == expected_lrs
    _train(opt, groups, total - stop, sched)
    resumed = [p.detach().clone() for g in groups for p in g["params"]]
    assert sched.get_last_lr() == straight_lr
    for a, b in zip(resumed, straight, strict=True):
        assert torch.equal(a, b)
    assert not any(math.isnan(x) for x in straight_lr)
