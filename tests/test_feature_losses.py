"""Golden-value tests of the feature losses (fitnet, at, cc, rkd, crd, review) against formulas
written out here in float64 (explicit loops over pairs and triplets), values and gradients to 1e-6;
plus shapes and bfloat16."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from timm_kd import Features, FeatureSpec, create_kd_loss
from timm_kd.losses.review import hierarchical_context_loss

B = 5


def _features(shapes, dim, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    maps = [torch.randn(B, *s, generator=g, dtype=dtype) for s in shapes]
    return Features(maps, torch.randn(B, dim, generator=g, dtype=dtype))


def _spec(shapes, dim):
    return FeatureSpec([tuple(s) for s in shapes], dim)


def _pair(s_shapes, s_dim, t_shapes, t_dim):
    s, t = _features(s_shapes, s_dim, 0), _features(t_shapes, t_dim, 1)
    s = Features([m.requires_grad_() for m in s.maps], s.pre_logits.requires_grad_())
    return s, t, _spec(s_shapes, s_dim), _spec(t_shapes, t_dim)


def _grads(features):
    return [m.grad for m in features.maps] + [features.pre_logits.grad]


def _check(loss, ref, s_a, s_b):
    assert loss.ndim == 0 and torch.allclose(loss, ref, atol=1e-6, rtol=0), (
        float(loss),
        float(ref),
    )
    loss.backward()
    ref.backward()
    for a, b in zip(_grads(s_a), _grads(s_b)):
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-6, rtol=0)


def _clone(f):
    return Features(
        [m.detach().clone().requires_grad_() for m in f.maps],
        f.pre_logits.detach().clone().requires_grad_(),
    )


def _smooth_l1(x):
    return torch.where(x.abs() < 1, 0.5 * x * x, x.abs() - 0.5)


def test_fitnet_regresses_student_maps_onto_teacher_maps():
    s, t, s_spec, t_spec = _pair([(4, 4, 4), (6, 2, 2)], 6, [(3, 4, 4), (5, 4, 4)], 5)
    loss_fn = create_kd_loss('fitnet', student=s_spec, teacher=t_spec).double()
    s2 = _clone(s)
    ref = 0.0
    for f_s, f_t, reg in zip(s2.maps, t.maps, loss_fn.regressors):
        conv, bn = reg[0], reg[1]
        y = torch.einsum('oc,bchw->bohw', conv.weight[:, :, 0, 0], f_s)
        mean, var = y.mean((0, 2, 3), keepdim=True), y.var((0, 2, 3), unbiased=False, keepdim=True)
        y = (y - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(
            1, -1, 1, 1
        )
        if y.shape[-1] != f_t.shape[-1]:
            y = F.interpolate(y, size=f_t.shape[-2:], mode='bilinear', align_corners=False)
        ref = ref + ((y - f_t) ** 2).sum() / f_t.numel()
    _check(loss_fn(s, t), ref, s, s2)


@pytest.mark.parametrize('t_dim', [6, 5])  # same width: no projection; other: a linear one
def test_prelogits_regresses_the_projected_pre_logits(t_dim):
    s, t, s_spec, t_spec = _pair([(4, 4, 4)], 6, [(3, 4, 4)], t_dim)
    loss_fn = create_kd_loss('prelogits', student=s_spec, teacher=t_spec).double()
    s2 = _clone(s)
    f_s = s2.pre_logits
    if t_dim != 6:
        w, b = loss_fn.projection.weight, loss_fn.projection.bias
        f_s = torch.stack([w @ row + b for row in f_s])
    else:
        assert loss_fn.projection is None
    ref = ((f_s - t.pre_logits) ** 2).sum() / t.pre_logits.numel()
    _check(loss_fn(s, t), ref, s, s2)


def test_at_matches_normalized_attention_maps():
    s, t, s_spec, t_spec = _pair([(4, 3, 3), (2, 2, 2)], 6, [(7, 3, 3), (3, 2, 2)], 5)
    s2 = _clone(s)
    ref = 0.0
    for f_s, f_t in zip(s2.maps, t.maps):
        q_s, q_t = (f_s**2).mean(1).reshape(B, -1), (f_t**2).mean(1).reshape(B, -1)
        q_s = q_s / torch.sqrt((q_s**2).sum(1, keepdim=True))
        q_t = q_t / torch.sqrt((q_t**2).sum(1, keepdim=True))
        ref = ref + ((q_s - q_t) ** 2).mean()
    _check(create_kd_loss('at', student=s_spec, teacher=t_spec)(s, t), 1000 / 2 * ref, s, s2)


def test_cc_correlates_consecutive_embedding_gaps():
    s, t, s_spec, t_spec = _pair([], 6, [], 9)
    loss_fn = create_kd_loss('cc', student=s_spec, teacher=t_spec, feat_dim=4).double()
    s2 = _clone(s)
    e_s = s2.pre_logits @ loss_fn.embed_s.weight.t() + loss_fn.embed_s.bias
    e_t = t.pre_logits @ loss_fn.embed_t.weight.t() + loss_fn.embed_t.bias
    d = (e_s - e_t).abs()
    ref = 0.02 * sum((d[i] * d[i + 1]).sum() for i in range(B - 1)) / (B - 1)
    _check(loss_fn(s, t), ref, s, s2)


def _rkd_relations(e):
    n = len(e)
    d = torch.stack(
        [
            torch.stack([(e[i] - e[j]).norm() if i != j else e.new_zeros(()) for j in range(n)])
            for i in range(n)
        ]
    )
    d = d / d[d > 0].mean()
    a = e.new_zeros(n, n, n)
    for i, j, k in itertools.product(range(n), repeat=3):
        if j != i and k != i:
            u, v = e[j] - e[i], e[k] - e[i]
            a[i, j, k] = (u @ v) / (u.norm() * v.norm())
    return d, a


def test_rkd_matches_distance_and_angle_relations():
    s, t, s_spec, t_spec = _pair([], 6, [], 9)
    s2 = _clone(s)
    d_s, a_s = _rkd_relations(s2.pre_logits)
    d_t, a_t = _rkd_relations(t.pre_logits)
    ref = 25 * _smooth_l1(d_s - d_t).mean() + 50 * _smooth_l1(a_s - a_t).mean()
    _check(create_kd_loss('rkd', student=s_spec, teacher=t_spec)(s, t), ref, s, s2)


def test_crd_nce_values_gradients_and_memory_update():
    n_data, k, dim, tau, mom = 20, 6, 4, 0.07, 0.5
    s, t, s_spec, t_spec = _pair([], 6, [], 9)
    loss_fn = create_kd_loss(
        'crd',
        student=s_spec,
        teacher=t_spec,
        num_samples=n_data,
        feat_dim=dim,
        num_negatives=k,
        nce_temperature=tau,
        momentum=mom,
    ).double()
    loss_fn.memory_s, loss_fn.memory_t = loss_fn.memory_s.double(), loss_fn.memory_t.double()
    mem_s, mem_t = loss_fn.memory_s.clone(), loss_fn.memory_t.clone()
    index = torch.tensor([3, 7, 0, 19, 11])
    contrast = torch.randint(0, n_data, (B, k + 1), generator=torch.Generator().manual_seed(5))
    contrast[:, 0] = index
    s2 = _clone(s)
    v_s = s2.pre_logits @ loss_fn.embed_s.weight.t() + loss_fn.embed_s.bias
    v_t = t.pre_logits @ loss_fn.embed_t.weight.t() + loss_fn.embed_t.bias
    v_s, v_t = v_s / v_s.norm(dim=1, keepdim=True), v_t / v_t.norm(dim=1, keepdim=True)

    def nce(v, memory):
        p = torch.stack(
            [
                torch.stack([torch.exp(memory[contrast[i, j]] @ v[i] / tau) for j in range(k + 1)])
                for i in range(B)
            ]
        )
        p = p / (p.detach().mean() * n_data)
        noise = k / n_data
        pos = sum(torch.log(p[i, 0] / (p[i, 0] + noise + 1e-7)) for i in range(B))
        neg = sum(
            torch.log(noise / (p[i, j] + noise + 1e-7)) for i in range(B) for j in range(1, k + 1)
        )
        return -(pos + neg) / B

    ref = nce(v_s, mem_t) + nce(v_t, mem_s)
    _check(loss_fn(s, t, index=index, contrast_index=contrast), ref, s, s2)
    for i, row in zip(index, v_s.detach()):
        expected = mem_s[i] * mom + row * (1 - mom)
        assert torch.allclose(loss_fn.memory_s[i], expected / expected.norm(), atol=1e-12)
    untouched = [i for i in range(n_data) if i not in index.tolist()]
    assert torch.equal(loss_fn.memory_t[untouched], mem_t[untouched])


def test_crd_memory_travels_in_the_state_dict_and_not_as_a_buffer():
    loss_fn = create_kd_loss(
        'crd', student=_spec([], 6), teacher=_spec([], 9), num_samples=10, feat_dim=4
    )
    assert not any('memory' in name for name, _ in loss_fn.named_buffers())
    state = loss_fn.state_dict()
    other = create_kd_loss(
        'crd', student=_spec([], 6), teacher=_spec([], 9), num_samples=10, feat_dim=4, seed=1
    )
    assert not torch.equal(other.memory_s, loss_fn.memory_s)
    other.load_state_dict(state)
    assert torch.equal(other.memory_s, loss_fn.memory_s)


def test_hierarchical_context_loss_matches_its_formula():
    g = torch.Generator().manual_seed(0)
    fs = [
        torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64),
        torch.randn(2, 3, 1, 1, generator=g, dtype=torch.float64),
    ]
    ft = [torch.randn_like(x) for x in fs]
    # 8x8: full map + pooled 4x4 (1/2), 2x2 (1/4), 1x1 (1/8); 1x1: the map alone
    level0 = (
        F.mse_loss(fs[0], ft[0])
        + sum(
            w * F.mse_loss(F.adaptive_avg_pool2d(fs[0], n), F.adaptive_avg_pool2d(ft[0], n))
            for n, w in ((4, 0.5), (2, 0.25), (1, 0.125))
        )
    ) / 1.875
    ref = level0 + F.mse_loss(fs[1], ft[1])
    assert torch.allclose(hierarchical_context_loss(fs, ft), ref, atol=1e-12)


def test_review_outputs_teacher_shapes_and_warms_up():
    s, t, s_spec, t_spec = _pair([(4, 8, 8), (6, 4, 4)], 6, [(3, 4, 4), (5, 2, 2)], 5)
    loss_fn = create_kd_loss('review', student=s_spec, teacher=t_spec, warmup_epochs=2).double()
    loss_fn.set_epoch(0)
    assert loss_fn(s, t) == 0  # official warm-up: min(epoch / warmup_epochs, 1)
    loss_fn.set_epoch(1)
    half = loss_fn(s, t)
    loss_fn.set_epoch(5)
    full = loss_fn(s, t)
    assert torch.allclose(half * 2, full)
    full.backward()
    assert all(m.grad is not None and m.grad.abs().sum() > 0 for m in s.maps)
    # deepest level: no fusion
    assert len(loss_fn.fusions) == 3 and loss_fn.fusions[-1].attention is None


@pytest.mark.parametrize('name', ['fitnet', 'at', 'cc', 'rkd', 'crd', 'review', 'prelogits'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_feature_losses_run_in_low_precision(name, dtype):
    s_shapes, t_shapes = [(4, 4, 4), (6, 2, 2)], [(3, 8, 8), (5, 4, 4)]
    kwargs = dict(student=_spec(s_shapes, 6), teacher=_spec(t_shapes, 5))
    if name == 'crd':
        kwargs.update(num_samples=16, num_negatives=4)
    loss_fn = create_kd_loss(name, **kwargs).to(dtype)
    if name == 'review':
        loss_fn.set_epoch(1)
    s, t = _features(s_shapes, 6, 0, dtype), _features(t_shapes, 5, 1, dtype)
    s = Features([m.requires_grad_() for m in s.maps], s.pre_logits.requires_grad_())
    loss = loss_fn(s, t, index=torch.arange(B)) if name == 'crd' else loss_fn(s, t)
    loss.float().backward()
    assert loss.ndim == 0 and torch.isfinite(loss.float())
    grads = [g for g in _grads(s) if g is not None]
    assert grads and all(g.dtype == dtype and torch.isfinite(g.float()).all() for g in grads)
