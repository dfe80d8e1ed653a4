"""Contrastive representation distillation."""

import math
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ..features import Features, FeatureSpec
from .registry import register_kd_loss


def _nce(scores: torch.Tensor, num_samples: int, eps: float = 1e-7) -> torch.Tensor:
    """NCE loss of CRD: column 0 holds the positive's score
    P, the other m columns the negatives' (noise 1/N).

    loss = -( sum_i log(P_i0 / (P_i0 + m/N)) + sum_{i, j>0} log((m/N) / (P_ij + m/N)) ) / B
    """
    m = scores.shape[1] - 1
    noise = m / num_samples
    log_pos = torch.log(scores[:, 0] / (scores[:, 0] + noise + eps))
    log_neg = torch.log(noise / (scores[:, 1:] + noise + eps))
    return -(log_pos.sum() + log_neg.sum()) / scores.shape[0]


def _all_gather(x: torch.Tensor) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    out = x.new_empty((dist.get_world_size() * x.shape[0], *x.shape[1:]))
    dist.all_gather_into_tensor(out, x.contiguous())
    return out


@register_kd_loss('crd', kind='feature')
class ContrastiveRepresentationKD(nn.Module):
    """CRD (Tian et al., "Contrastive Representation
    Distillation", ICLR 2020), as VanillaKD's official code.

        v_s = l2norm(W_s f_s), v_t = l2norm(W_t f_t)    learnable embeddings of the pre-logits
        memory banks M_s, M_t: one `feat_dim` row per training image
        P(v, row) = exp(<row, v> / tau) / Z              Z fixed from the first batch (mean * N)
        scores_s = P(v_s, M_t[idx]), scores_t = P(v_t, M_s[idx])
                                                         idx = [own index, K uniform negatives]
        loss = NCE(scores_s) + NCE(scores_t)
        then M[i] <- l2norm(momentum * M[i] + (1 - momentum) * v_i)

    tau is `nce_temperature` (0.07), not a softmax temperature: --kd-temperature leaves it alone.
    Needs each image's dataset index (timm-kd-train passes it when crd is chosen). Cost: the banks
    hold 2 x N x feat_dim floats (ImageNet-1k, 128-d: 1.3 GB per process) and each step gathers B x
    (K+1) rows of each (K=16384 by default), so memory and step time grow with the dataset and K,
    not with the models. Under DDP every process keeps a full copy: the bank update all-gathers the
    indices and embeddings of all processes, so the copies stay identical (initialized from a fixed
    seed, Z averaged over processes). The banks are kept out of the module's buffers so DDP does not
    broadcast them every step; they travel in the task state (`get_extra_state`) for resume, never
    in exported weights.
    """

    needs_index = True

    def __init__(
        self,
        student: FeatureSpec,
        teacher: FeatureSpec,
        num_samples: int,
        feat_dim: int = 128,
        num_negatives: int = 16384,
        nce_temperature: float = 0.07,
        momentum: float = 0.5,
        seed: int = 0,
    ):
        super().__init__()
        self.embed_s = nn.Linear(student.pre_logits_dim, feat_dim)
        self.embed_t = nn.Linear(teacher.pre_logits_dim, feat_dim)
        self.num_samples, self.num_negatives = num_samples, num_negatives
        self.nce_temperature, self.momentum = nce_temperature, momentum
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        g = torch.Generator().manual_seed(seed)
        self.memory_s = torch.rand(num_samples, feat_dim, generator=g) * (2 * stdv) - stdv
        self.memory_t = torch.rand(num_samples, feat_dim, generator=g) * (2 * stdv) - stdv
        self.z_s: Optional[torch.Tensor] = None
        self.z_t: Optional[torch.Tensor] = None

    def get_extra_state(self):
        return {
            'memory_s': self.memory_s,
            'memory_t': self.memory_t,
            'z_s': self.z_s,
            'z_t': self.z_t,
        }

    def set_extra_state(self, state) -> None:
        # updated in place
        self.memory_s, self.memory_t = (
            state['memory_s'].clone(),
            state['memory_t'].clone(),
        )
        self.z_s, self.z_t = state['z_s'], state['z_t']

    def _normalizer(self, p: torch.Tensor) -> torch.Tensor:
        z = p.detach().mean() * self.num_samples
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(z)
            z = z / dist.get_world_size()
        return z

    @torch.no_grad()
    def _update(self, memory: torch.Tensor, index: torch.Tensor, v: torch.Tensor) -> None:
        rows = memory.index_select(0, index) * self.momentum + v * (1 - self.momentum)
        memory.index_copy_(0, index, F.normalize(rows, dim=1))

    def forward(
        self,
        student: Features,
        teacher: Features,
        index: torch.Tensor,
        contrast_index: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        f_s = student.pre_logits
        v_s = F.normalize(self.embed_s(f_s), dim=1)
        v_t = F.normalize(self.embed_t(teacher.pre_logits.to(f_s.dtype)), dim=1)
        if self.memory_s.device != v_s.device:
            self.memory_s, self.memory_t = (
                self.memory_s.to(v_s.device),
                self.memory_t.to(v_s.device),
            )
        if contrast_index is None:
            contrast_index = torch.randint(
                0, self.num_samples, (len(index), self.num_negatives + 1), device=v_s.device
            )
            contrast_index[:, 0] = index
        rows_t = self.memory_t[contrast_index].to(v_s.dtype)  # B x (K+1) x feat_dim, no gradient
        rows_s = self.memory_s[contrast_index].to(v_s.dtype)
        p_s = torch.exp(torch.bmm(rows_t, v_s.unsqueeze(2)).squeeze(2) / self.nce_temperature)
        p_t = torch.exp(torch.bmm(rows_s, v_t.unsqueeze(2)).squeeze(2) / self.nce_temperature)
        if self.z_s is None:
            self.z_s, self.z_t = self._normalizer(p_s), self._normalizer(p_t)
        loss = _nce(p_s / self.z_s, self.num_samples) + _nce(p_t / self.z_t, self.num_samples)
        all_index = _all_gather(index)
        self._update(self.memory_s, all_index, _all_gather(v_s.detach().to(self.memory_s.dtype)))
        self._update(self.memory_t, all_index, _all_gather(v_t.detach().to(self.memory_t.dtype)))
        return loss
