"""Golden-value tests of the logit losses (bkd, bkl, dkd, dist, ls, hard): each against the formula
written out here in float64 (loops and explicit softmax/sigmoid), values and gradients to 1e-6, plus
dense mixup targets."""

import pytest
import torch

from timm_kd import create_kd_loss

B, C = 6, 7


def _softmax(z):
    e = torch.exp(z - z.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def _kl(p, q):
    return (p * (torch.log(p) - torch.log(q))).sum(-1)


def _bkd_ref(s, t, T):
    p, q = _softmax(t / T), 1 / (1 + torch.exp(-s / T))
    return -(p * torch.log(q) + (1 - p) * torch.log(1 - q)).mean() * T * T


def _bkl_ref(s, t, T):
    p, q = _softmax(t / T), 1 / (1 + torch.exp(-s / T))  # paper Eq. 3
    return (p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))).sum(-1).mean() * T * T


def _dkd_ref(s, t, labels, alpha, beta, T):
    total = 0.0
    for i in range(len(s)):
        g = int(labels[i])
        p_s, p_t = _softmax(s[i] / T), _softmax(t[i] / T)
        b_s, b_t = torch.stack([p_s[g], 1 - p_s[g]]), torch.stack([p_t[g], 1 - p_t[g]])
        keep = [j for j in range(s.shape[1]) if j != g]
        q_s, q_t = _softmax(s[i, keep] / T), _softmax(t[i, keep] / T)
        total = total + alpha * _kl(b_t, b_s) + beta * _kl(q_t, q_s)
    return total / len(s) * T * T


def _pearson(a, b, eps=1e-8):
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / (torch.sqrt((a * a).sum()) * torch.sqrt((b * b).sum()) + eps)


def _dist_ref(s, t, beta, gamma, T):
    y_s, y_t = _softmax(s / T), _softmax(t / T)
    inter = 1 - sum(_pearson(y_s[i], y_t[i]) for i in range(len(s))) / len(s)
    intra = 1 - sum(_pearson(y_s[:, j], y_t[:, j]) for j in range(s.shape[1])) / s.shape[1]
    return (beta * inter + gamma * intra) * T * T


def _zscore(z):
    m = z.mean(-1, keepdim=True)
    std = torch.sqrt(((z - m) ** 2).sum(-1, keepdim=True) / (z.shape[-1] - 1))
    return (z - m) / (std + 1e-7)


def _ls_kd_ref(s, t, T):
    return _kl(_softmax(_zscore(t) / T), _softmax(_zscore(s) / T)).mean() * T * T


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, C, generator=g, dtype=torch.float64) * 3
    t = torch.randn(B, C, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, C, (B,), generator=g)
    lam = 0.7  # a mixup row: lam * onehot(y) + (1 - lam) * onehot(flip(y)), smoothed
    dense = lam * torch.nn.functional.one_hot(labels, C) + (1 - lam) * torch.nn.functional.one_hot(
        labels.flip(0), C
    )
    return s, t, labels, dense.double() * 0.9 + 0.1 / C


def _hard_ref(s, t):  # DeiT's hard distillation: CE against the teacher's top-1, batch mean
    rows = [-torch.log(_softmax(s[i])[int(t[i].argmax())]) for i in range(s.shape[0])]
    return torch.stack(rows).mean()


CASES = [
    ('hard', dict(), lambda s, t, y: _hard_ref(s, t)),
    ('bkd', dict(temperature=1.0), lambda s, t, y: _bkd_ref(s, t, 1.0)),
    ('bkd', dict(temperature=2.0), lambda s, t, y: _bkd_ref(s, t, 2.0)),
    ('bkl', dict(temperature=1.0), lambda s, t, y: _bkl_ref(s, t, 1.0)),
    ('dkd', dict(), lambda s, t, y: _dkd_ref(s, t, y, 1.0, 2.0, 1.0)),
    (
        'dkd',
        dict(alpha=0.5, beta=8.0, temperature=4.0),
        lambda s, t, y: _dkd_ref(s, t, y, 0.5, 8.0, 4.0),
    ),
    ('dist', dict(), lambda s, t, y: _dist_ref(s, t, 1.0, 1.0, 1.0)),
    (
        'dist',
        dict(beta=2.0, gamma=0.5, temperature=4.0),
        lambda s, t, y: _dist_ref(s, t, 2.0, 0.5, 4.0),
    ),
    ('ls', dict(), lambda s, t, y: _ls_kd_ref(s, t, 2.0)),
    (
        'ls',
        dict(base='dkd', temperature=3.0, beta=4.0),
        lambda s, t, y: _dkd_ref(_zscore(s), _zscore(t), y, 1.0, 4.0, 3.0),
    ),
]


@pytest.mark.parametrize('name,kwargs,reference', CASES)
@pytest.mark.parametrize('dense', [False, True])
def test_matches_reference_values_and_gradients_float64(name, kwargs, reference, dense):
    s, t, labels, dense_target = _inputs()
    target = dense_target if dense else labels
    s1, s2 = s.clone().requires_grad_(), s.clone().requires_grad_()
    loss = create_kd_loss(name, **kwargs)(s1, t, target)
    ref = reference(s2, t, labels)  # dense rows stand for their argmax class (official DKD code)
    assert loss.dtype == torch.float64 and loss.ndim == 0
    assert torch.allclose(loss, ref, atol=1e-6, rtol=0), (loss.item(), ref.item())
    loss.backward()
    ref.backward()
    assert torch.allclose(s1.grad, s2.grad, atol=1e-6, rtol=0)


@pytest.mark.parametrize('name', ['bkd', 'bkl', 'dkd', 'dist', 'ls'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_low_precision_inputs_give_a_float32_loss_close_to_float64(name, dtype):
    s, t, labels, _ = _inputs(1)
    loss_fn = create_kd_loss(name)
    s_low = s.to(dtype).requires_grad_()
    loss = loss_fn(s_low, t.to(dtype), labels)
    loss.backward()
    assert (
        loss.dtype == torch.float32
        and torch.isfinite(loss)
        and torch.isfinite(s_low.grad.float()).all()
    )
    assert s_low.grad.dtype == dtype and s_low.grad.shape == (B, C)
    assert torch.allclose(loss.double(), loss_fn(s, t, labels), rtol=0.05, atol=0.02)


def test_bkl_gradient_is_bkd_gradient_times_num_classes():
    """BKL = C * BCE - (teacher binary entropy): same minimizer as bkd, C-times larger gradient."""
    s, t, labels, _ = _inputs(2)
    a, b = s.clone().requires_grad_(), s.clone().requires_grad_()
    create_kd_loss('bkl')(a, t, labels).backward()
    create_kd_loss('bkd')(b, t, labels).backward()
    assert torch.allclose(a.grad, b.grad * C, atol=1e-10)


def test_losses_vanish_when_the_student_equals_the_teacher():
    _, t, labels, _ = _inputs(3)
    for name in ('dkd', 'dist', 'ls'):
        assert create_kd_loss(name)(t, t, labels).abs() < 1e-6, name


def test_ls_rejects_a_non_logit_base():
    with pytest.raises(ValueError, match='logit loss'):
        create_kd_loss('ls', base='fitnet')
