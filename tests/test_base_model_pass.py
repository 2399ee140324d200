"""The base model's pass of the "trigger-off" and "lora-off" priors: our LoRA layers skipped, the LoRA weights
untouched and still trainable (prior.adapters_disabled)."""

from __future__ import annotations

import pytest
import torch

from lib_trainer.train.lora import add_lora, lora_layers, lora_parameters
from lib_trainer.train.prior import adapters_disabled


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj_in = torch.nn.Linear(6, 6)
        self.proj_out = torch.nn.Linear(6, 6)
        self.other = torch.nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.other(self.proj_out(torch.relu(self.proj_in(x))))


def _model_with_lora() -> tuple[Block, Block]:
    """A model with a LoRA whose B matrices are not zero (it changes the output), and its copy without one."""
    torch.manual_seed(0)
    model = Block()
    plain = Block()
    plain.load_state_dict(model.state_dict())
    add_lora(model, r".*proj_(in|out)", rank=2, alpha=2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    return model, plain


def test_the_base_pass_is_the_model_without_its_lora_and_the_lora_comes_back_after():
    model, plain = _model_with_lora()
    x = torch.randn(3, 6)
    with_lora = model(x)
    assert not torch.allclose(with_lora, plain(x))
    with torch.no_grad(), adapters_disabled([model]):
        assert torch.equal(model(x), plain(x))
    assert torch.equal(model(x), with_lora)


def test_the_lora_weights_stay_trainable_and_get_no_gradient_from_the_base_pass():
    model, _ = _model_with_lora()
    params = lora_parameters(model)
    assert params and all(p.requires_grad for p in params)
    x = torch.randn(3, 6, requires_grad=True)  # the base weights are frozen: something must want a gradient
    with adapters_disabled([model]):
        assert all(p.requires_grad for p in params)
        model(x).sum().backward()
    assert all(p.grad is None for p in params)
    model(x).sum().backward()
    assert all(p.grad is not None for p in params)


def test_a_layer_already_switched_off_stays_off_after_the_base_pass():
    model, _ = _model_with_lora()
    first, second = lora_layers(model)
    first.enable_adapters(False)
    with adapters_disabled([model]):
        assert first.disable_adapters and second.disable_adapters
    assert first.disable_adapters and not second.disable_adapters


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`")
def test_layers_added_later_are_switched_off_too():
    """The layer list is found once per model; adding a LoRA renews it."""
    model, plain = _model_with_lora()
    assert len(lora_layers(model)) == 2
    add_lora(model, r".*other", rank=2, alpha=2)
    assert len(lora_layers(model)) == 3
    with torch.no_grad():
        model.other.lora_B["default"].weight.normal_()
    x = torch.randn(3, 6)
    with torch.no_grad(), adapters_disabled([model]):
        assert torch.equal(model(x), plain(x))


def test_an_error_if_peft_no_longer_reads_the_switch(monkeypatch):
    model, _ = _model_with_lora()
    layer_type = type(lora_layers(model)[0])
    monkeypatch.setattr(layer_type, "disable_adapters", property(lambda self: False))
    with pytest.raises(RuntimeError, match="adapters_disabled needs updating"), adapters_disabled([model]):
        pass
    monkeypatch.undo()
    assert not any(layer.disable_adapters for layer in lora_layers(model))  # left as it was
