"""Each distillation loss against its formula on small hand-computed cases."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from kdeploy.distill.methods import METHOD_CLASSES, METHOD_PARAMS, Outputs, create_method, kl_soft
from kdeploy.distill.methods.dkd import dkd_loss
from kdeploy.errors import UserError

from .conftest import benchmark_module


def softmax(xs: list[float], t: float = 1.0) -> list[float]:
    es = [math.exp(x / t) for x in xs]
    return [e / sum(es) for e in es]


def test_registry_lists_methods() -> None:
    assert {"ce", "kd", "fitnet", "at", "dkd", "dist", "mse"} <= set(METHOD_CLASSES.names())
    with pytest.raises(UserError, match="unknown distillation method 'kdd'.*did you mean 'kd'"):
        METHOD_CLASSES.get("kdd")


def test_every_method_has_its_schema_and_every_schema_a_method() -> None:
    assert METHOD_PARAMS.names() == METHOD_CLASSES.names()
    for name in METHOD_CLASSES:
        assert METHOD_CLASSES.get(name).Params is METHOD_PARAMS.get(name), name


def test_kl_soft_matches_hand_computation() -> None:
    s, t, temp = [1.0, 2.0, 0.5], [2.0, 0.0, 1.0], 2.0
    ps, pt = softmax(s, temp), softmax(t, temp)
    expected = sum(q * math.log(q / p) for p, q in zip(ps, pt, strict=True)) * temp**2
    got = kl_soft(torch.tensor([s]), torch.tensor([t]), temp)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_kl_soft_is_batch_mean_and_zero_for_equal_logits() -> None:
    a = torch.randn(4, 5)
    assert kl_soft(a, a, 3.0).item() == pytest.approx(0.0, abs=1e-6)
    b = torch.randn(4, 5)
    per_sample = [kl_soft(a[i : i + 1], b[i : i + 1], 3.0).item() for i in range(4)]
    assert kl_soft(a, b, 3.0).item() == pytest.approx(sum(per_sample) / 4, rel=1e-5)


def test_standardized_kl_ignores_each_samples_logit_scale_and_shift() -> None:
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    scale, shift = torch.tensor([[0.1], [1.0], [5.0], [30.0]]), torch.randn(4, 1)
    plain = kl_soft(s, t, 2.0, standardize=True).item()
    assert kl_soft(s * scale + shift, t * scale.flip(0) - shift, 2.0, standardize=True).item() == pytest.approx(plain)
    assert kl_soft(s * scale, t, 2.0).item() != pytest.approx(kl_soft(s, t, 2.0).item())  # the plain term depends on it
    z = (t - t.mean(1, keepdim=True)) / t.std(1, keepdim=True)  # the formula: z-scores, then Hinton's term
    assert plain == pytest.approx(kl_soft(s / s.std(1, keepdim=True), z, 2.0).item(), rel=1e-5)


def test_kd_standardize_is_off_by_default_and_reaches_the_loss() -> None:
    s, t, y = torch.randn(3, 10), 20 * torch.randn(3, 10), torch.tensor([1, 2, 3])
    out = Outputs(student_logits=s, teacher_logits=t, targets=y)
    assert create_method("kd", {}).params.standardize is False
    losses = create_method("kd", {"standardize": True, "temperature": 2.0, "kd_weight": 9.0})(out)
    assert losses["kd"].item() == pytest.approx(9.0 * kl_soft(s, t, 2.0, standardize=True).item(), rel=1e-5)


def test_kd_alpha_weights_the_soft_term() -> None:
    m = create_method("kd", {"temperature": 4.0, "alpha": 0.7})
    s, t, y = torch.randn(3, 10), torch.randn(3, 10), torch.tensor([1, 2, 3])
    losses = m(Outputs(student_logits=s, teacher_logits=t, targets=y))
    ce = nn.functional.cross_entropy(s, y).item()
    assert losses["ce"].item() == pytest.approx(0.3 * ce, rel=1e-5)
    assert losses["kd"].item() == pytest.approx(0.7 * kl_soft(s, t, 4.0).item(), rel=1e-5)


def test_kd_mdistiller_convention_overrides_alpha() -> None:
    m = create_method("kd", {"ce_weight": 0.1, "kd_weight": 9.0})
    assert m.params.weights == (0.1, 9.0)
    assert create_method("kd", {"alpha": 0.2, "kd_weight": 3.0}).params.weights == pytest.approx((0.8, 3.0))


def test_kd_weights_follow_alpha_and_are_not_stored() -> None:
    m = create_method("kd", {"alpha": 0.2})
    assert m.params.weights == pytest.approx((0.8, 0.2))
    assert (m.params.ce_weight, m.params.kd_weight) == (None, None), "derived weights would override alpha on re-run"


def test_dkd_equals_kd_split_when_weights_are_one() -> None:
    # With alpha = beta = 1 the decomposition is exact: KD = TCKD + (1 - p_t^target) * NCKD.
    s, t, y, temp = torch.randn(5, 7), torch.randn(5, 7), torch.tensor([0, 1, 2, 3, 4]), 2.0
    ps, pt = torch.softmax(s / temp, 1), torch.softmax(t / temp, 1)
    b_s = torch.stack([ps[range(5), y], 1 - ps[range(5), y]], 1)
    b_t = torch.stack([pt[range(5), y], 1 - pt[range(5), y]], 1)
    tckd = (b_t * (b_t / b_s).log()).sum(1).mean() * temp**2
    mask = torch.nn.functional.one_hot(y, 7).bool()
    qs = torch.softmax((s / temp).masked_fill(mask, -1e9), 1)
    qt = torch.softmax((t / temp).masked_fill(mask, -1e9), 1)
    nckd = torch.where(mask, 0.0, qt * (qt / qs).log()).sum(1).mean() * temp**2
    got_t, got_n = dkd_loss(s, t, y, 1.0, 1.0, temp)
    assert got_t.item() == pytest.approx(tckd.item(), rel=1e-4)
    assert got_n.item() == pytest.approx(nckd.item(), rel=1e-4)
    # and the identity with plain KD, per sample
    kd = sum(kl_soft(s[i : i + 1], t[i : i + 1], temp) for i in range(5)) / 5
    per = [
        dkd_loss(s[i : i + 1], t[i : i + 1], y[i : i + 1], 1.0, 1.0, temp)[0]
        + (1 - pt[i, y[i]]) * dkd_loss(s[i : i + 1], t[i : i + 1], y[i : i + 1], 1.0, 1.0, temp)[1]
        for i in range(5)
    ]
    assert (sum(per) / 5).item() == pytest.approx(kd.item(), rel=1e-4)


def test_dkd_warmup_ramps_linearly() -> None:
    m = create_method("dkd", {"warmup": 4})
    s, t, y = torch.randn(3, 5), torch.randn(3, 5), torch.tensor([0, 1, 2])
    full = m(Outputs(student_logits=s, teacher_logits=t, targets=y, epoch=10))
    first = m(Outputs(student_logits=s, teacher_logits=t, targets=y, epoch=0))
    assert first["nckd"].item() == pytest.approx(full["nckd"].item() / 4, rel=1e-5)
    assert first["ce"].item() == pytest.approx(full["ce"].item())


def test_dist_terms_are_one_minus_mean_pearson_over_rows_and_columns() -> None:
    import numpy as np

    s, t, y, temp = torch.randn(6, 5), torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0]), 2.0
    ps, pt = torch.softmax(s / temp, 1).double().numpy(), torch.softmax(t / temp, 1).double().numpy()
    inter = 1 - np.mean([np.corrcoef(ps[i], pt[i])[0, 1] for i in range(6)])
    intra = 1 - np.mean([np.corrcoef(ps[:, c], pt[:, c])[0, 1] for c in range(5)])
    losses = create_method("dist", {"beta": 2.0, "gamma": 0.5, "temperature": temp})(
        Outputs(student_logits=s, teacher_logits=t, targets=y)
    )
    assert losses["inter"].item() == pytest.approx(2.0 * temp**2 * inter, rel=1e-4)
    assert losses["intra"].item() == pytest.approx(0.5 * temp**2 * intra, rel=1e-4)
    assert losses["ce"].item() == pytest.approx(nn.functional.cross_entropy(s, y).item(), rel=1e-6)


def test_dist_asks_for_correlation_not_equal_probabilities() -> None:
    # A less confident student with the teacher's probabilities mixed with uniform (p_s = 0.5 p_t + 0.5 / C, an
    # affine map of each row) pays KL but no inter-class DIST term; an anti-correlated one pays more than 1.
    t = torch.tensor([[4.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    s = torch.log(0.5 * torch.softmax(t, 1) + 0.5 / 3)
    y = torch.tensor([0, 1])
    m = create_method("dist", {"gamma": 0.0})
    assert kl_soft(s, t, 1.0).item() > 0.05
    assert m(Outputs(student_logits=s, teacher_logits=t, targets=y))["inter"].item() == pytest.approx(0.0, abs=1e-6)
    assert m(Outputs(student_logits=-t, teacher_logits=t, targets=y))["inter"].item() > 1.0


def test_mse_is_the_mean_squared_logit_difference_and_pure_by_default() -> None:
    s, t, y = torch.tensor([[1.0, 2.0, 0.5]]), torch.tensor([[2.0, 0.0, 1.0]]), torch.tensor([1])
    losses = create_method("mse", {})(Outputs(student_logits=s, teacher_logits=t, targets=y))
    assert losses["mse"].item() == pytest.approx((1.0 + 4.0 + 0.25) / 3)
    assert losses["ce"].item() == 0.0
    weighted = create_method("mse", {"kd_weight": 0.5, "ce_weight": 0.25})(
        Outputs(student_logits=s, teacher_logits=t, targets=y)
    )
    assert weighted["mse"].item() == pytest.approx(0.5 * 5.25 / 3)
    assert weighted["ce"].item() == pytest.approx(0.25 * nn.functional.cross_entropy(s, y).item())


def test_mse_at_half_weight_steps_like_kd_at_a_high_temperature() -> None:
    # centred logits: T^2 * KL's gradient tends to (z_s - z_t) / C, MSE's (weight 0.5) is exactly that
    t = torch.tensor([[1.0, -0.5, -0.5], [0.2, 0.3, -0.5]])
    s = torch.zeros_like(t, requires_grad=True)
    y = torch.tensor([0, 1])
    out = Outputs(student_logits=s, teacher_logits=t, targets=y)
    (g_kd,) = torch.autograd.grad(create_method("kd", {"temperature": 1000.0, "alpha": 1.0})(out)["kd"], s)
    (g_mse,) = torch.autograd.grad(create_method("mse", {"kd_weight": 0.5})(out)["mse"], s)
    assert torch.allclose(g_kd, g_mse, atol=1e-4)


def test_fitnet_hint_is_mse_of_regressed_student() -> None:
    m = create_method("fitnet", {"student_layer": "a", "teacher_layer": "b", "hint_weight": 2.0})
    s_feat, t_feat = torch.randn(2, 4, 6, 6), torch.randn(2, 8, 3, 3)
    m.setup([s_feat], [t_feat])
    m.eval()
    logits, y = torch.randn(2, 3), torch.tensor([0, 2])
    losses = m(Outputs(student_logits=logits, targets=y, student_features=[s_feat], teacher_features=[t_feat]))
    regressed = nn.functional.adaptive_avg_pool2d(m.regressor(s_feat), (3, 3))
    assert losses["hint"].item() == pytest.approx(2.0 * ((regressed - t_feat) ** 2).mean().item(), rel=1e-5)


def test_fitnet_on_vectors_uses_a_linear_regressor() -> None:
    m = create_method("fitnet", {"student_layer": "a", "teacher_layer": "b"})
    m.setup([torch.randn(2, 16)], [torch.randn(2, 32)])
    assert isinstance(m.regressor, nn.Linear)
    assert m.regressor.in_features == 16 and m.regressor.out_features == 32


def test_at_loss_matches_formula() -> None:
    m = create_method("at", {"student_layers": ["x"], "teacher_layers": ["y"], "beta": 1000.0})
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)
    logits, y = torch.randn(2, 3), torch.tensor([0, 1])

    def amap(f: torch.Tensor) -> torch.Tensor:
        a = f.pow(2).mean(1).flatten(1)
        return a / a.norm(dim=1, keepdim=True)

    # the authors' code (and mdistiller): beta * sum over pairs of the mean squared difference, no / 2
    expected = 1000.0 * (amap(s) - amap(t)).pow(2).mean()
    losses = m(Outputs(student_logits=logits, targets=y, student_features=[s], teacher_features=[t]))
    assert losses["at"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert m(Outputs(student_logits=logits, targets=y, student_features=[t], teacher_features=[t]))[
        "at"
    ].item() == pytest.approx(0.0, abs=1e-7)


def test_at_adds_the_soft_logit_term_only_when_kd_weight_is_set() -> None:
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)
    logits, teacher_logits, y = torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1])
    out = Outputs(
        student_logits=logits, targets=y, teacher_logits=teacher_logits, student_features=[s], teacher_features=[t]
    )
    layers = {"student_layers": ["x"], "teacher_layers": ["y"]}
    assert "kd" not in create_method("at", layers)(out)
    losses = create_method("at", {**layers, "kd_weight": 0.9, "temperature": 2.0})(out)
    assert losses["kd"].item() == pytest.approx(0.9 * kl_soft(logits, teacher_logits, 2.0).item(), rel=1e-6)


def test_ce_method_is_plain_cross_entropy() -> None:
    m = create_method("ce", {})
    s, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    assert m(Outputs(student_logits=s, targets=y))["ce"].item() == pytest.approx(
        nn.functional.cross_entropy(s, y).item()
    )


def test_kd_grad_scale_is_the_rms_per_image_gradient_of_the_soft_term() -> None:
    """benchmarks/kd_grad_scale.py: alpha * T² * KL has gradient alpha * T * (p_s - p_t) per image (batch mean)."""
    grad_scale = benchmark_module("kd_grad_scale")
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(32, 10, generator=g), 3 * torch.randn(32, 10, generator=g)
    labels = torch.randint(0, 10, (32,), generator=g)
    t, alpha = 4.0, 0.9
    per_image = alpha * t * (torch.softmax(student / t, 1) - torch.softmax(teacher / t, 1))
    _, rms = grad_scale.teacher_terms(
        grad_scale.parse_method(f"kd={{temperature: {t}, alpha: {alpha}}}"), student, teacher, labels
    )
    assert rms == pytest.approx(float(per_image.norm(dim=1).pow(2).mean().sqrt()), rel=1e-5)


def test_kd_grad_scale_names_a_bad_method_before_loading_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    grad_scale = benchmark_module("kd_grad_scale")
    monkeypatch.setattr("sys.argv", ["kd_grad_scale.py", str(tmp_path / "no_run"), "kd={temperature: 4}", "t4={}"])
    assert grad_scale.main() == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown distillation method 't4'") and "\n" not in err
