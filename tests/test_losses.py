"""Golden-value tests of the KD losses against the formulas written out by hand in float64."""

import pytest
import torch

from timm_kd import KDError, create_kd_loss, list_kd_losses


def _kd_reference(s, t, temperature):
    """KL(p_t || p_s) * T^2, summed over classes, mean over
    batch; softmax spelled out (VanillaKD Sec. 2.1)."""

    def softmax(z):
        e = torch.exp(z - z.max(dim=1, keepdim=True).values)
        return e / e.sum(dim=1, keepdim=True)

    p_s, p_t = softmax(s / temperature), softmax(t / temperature)
    return (p_t * (torch.log(p_t) - torch.log(p_s))).sum(dim=1).mean() * temperature**2


@pytest.mark.parametrize('temperature', [1.0, 2.0, 4.0])
def test_kd_matches_reference_values_and_gradients_float64(temperature):
    g = torch.Generator().manual_seed(1)
    s = (torch.randn(8, 10, generator=g, dtype=torch.float64) * 3).requires_grad_()
    t = torch.randn(8, 10, generator=g, dtype=torch.float64) * 3
    s_ref = s.detach().clone().requires_grad_()
    loss = create_kd_loss('kd', temperature=temperature)(s, t, torch.randint(0, 10, (8,)))
    ref = _kd_reference(s_ref, t, temperature)
    assert loss.dtype == torch.float64
    assert torch.allclose(loss, ref, atol=1e-6, rtol=0)
    loss.backward()
    ref.backward()
    assert torch.allclose(s.grad, s_ref.grad, atol=1e-6, rtol=0)


def test_kd_gradient_is_softmax_difference():
    """d/ds of T^2 KL = T (p_s - p_t) / batch: the textbook gradient of Hinton et al."""
    s = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 5, dtype=torch.float64)
    create_kd_loss('kd', temperature=2.0)(s, t, None).backward()
    expected = 2.0 * (torch.softmax(s.detach() / 2, 1) - torch.softmax(t / 2, 1)) / 4
    assert torch.allclose(s.grad, expected, atol=1e-10)


def test_kd_is_zero_for_identical_logits_and_positive_otherwise():
    kd = create_kd_loss('kd')
    z = torch.randn(3, 7)
    assert kd(z, z, None).abs() < 1e-6
    assert kd(z, z.flip(1), None) > 0


def test_kd_accepts_dense_mixup_targets_and_ignores_them():
    kd = create_kd_loss('kd')
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    dense = torch.softmax(torch.randn(4, 6), 1)
    assert torch.equal(kd(s, t, dense), kd(s, t, torch.arange(4)))


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16])
def test_kd_half_precision_inputs_compute_in_float32(dtype):
    s, t = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    kd = create_kd_loss('kd')
    loss = kd(s.to(dtype), t.to(dtype), None)
    assert loss.dtype == torch.float32
    assert torch.allclose(loss.double(), kd(s, t, None), atol=0.05)


def test_registry_lists_and_rejects_unknown_names():
    assert 'kd' in list_kd_losses()
    with pytest.raises(KDError, match="unknown KD loss 'nope'; choose one of: .*kd"):
        create_kd_loss('nope')
    with pytest.raises(KDError, match="bad arguments for KD loss 'kd'"):
        create_kd_loss('kd', alpha=1)
    with pytest.raises(ValueError, match='temperature'):
        create_kd_loss('kd', temperature=0)
