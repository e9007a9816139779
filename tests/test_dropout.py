"""The MLP's CPU dropout: masks from random bits, not bernoulli_."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdeploy.models import create_model
from kdeploy.models.dropout import BitsDropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.8])
def test_mask_drops_with_probability_p(p: float) -> None:
    torch.manual_seed(0)
    keep = keep_mask(torch.Size((1000, 1201)), p, torch.device("cpu"))  # an odd count: the last int64 is cut
    assert keep.shape == (1000, 1201) and keep.dtype == torch.bool
    assert abs(keep.float().mean().item() - (1 - p)) < 0.002
    assert abs(keep[:, 0::4].float().mean().item() - keep[:, 1::4].float().mean().item()) < 0.01  # all 4 lanes


def test_training_mode_scales_kept_units_and_their_gradient() -> None:
    torch.manual_seed(0)
    drop = BitsDropout(0.3)
    x = torch.ones(64, 500, requires_grad=True)
    y = drop(x)
    assert y.unique().tolist() == pytest.approx([0.0, 1 / 0.7])
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d(sum)/dx = mask / (1 - p)
    assert not torch.equal(drop(x), y)  # a new mask per call


def test_mask_follows_the_global_seed() -> None:
    x = torch.ones(32, 100)
    torch.manual_seed(3)
    a = BitsDropout(0.5)(x)
    torch.manual_seed(3)
    assert torch.equal(a, BitsDropout(0.5)(x))


def test_eval_zero_and_one_behave_as_nn_dropout() -> None:
    x = torch.randn(8, 16)
    assert torch.equal(BitsDropout(0.3).eval()(x), x)
    assert torch.equal(BitsDropout(0.0)(x), x)
    assert torch.equal(BitsDropout(1.0)(x), torch.zeros_like(x))
    assert isinstance(BitsDropout(0.3), nn.Dropout)


def test_bf16_activations_keep_their_dtype() -> None:
    y = BitsDropout(0.3)(torch.ones(4, 64, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16


def test_mlp_uses_it_and_has_no_new_state() -> None:
    model = create_model("mlp", num_classes=10, in_shape=(1, 28, 28), hidden=[32], dropout=0.2, input_dropout=0.1)
    assert isinstance(model.drop1, BitsDropout) and isinstance(model.drop_in, BitsDropout)
    assert list(model.state_dict()) == ["fc1.weight", "fc1.bias", "head.weight", "head.bias"]
