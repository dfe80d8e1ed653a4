"""DIST: distillation from a stronger teacher by correlation, not by matching probabilities."""

import torch
import torch.nn as nn

from .registry import register_kd_loss, upcast


def _pearson_distance(a: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """1 - mean over rows of the Pearson correlation between
    rows of a and b (eps added to the norm product)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    corr = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)
    return 1 - corr.mean()


@register_kd_loss('dist')
class DIST(nn.Module):
    """DIST (Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022).

        Y_s = softmax(z_s / T), Y_t = softmax(z_t / T)            (batch x classes)
        inter = T^2 * (1 - mean_i pearson(Y_s[i, :], Y_t[i, :]))  across classes, per image
        intra = T^2 * (1 - mean_j pearson(Y_s[:, j], Y_t[:, j]))  across images, per class
        loss = beta * inter + gamma * intra

    eps=1e-8 is added to the product of the norms (not to each norm), as in the official VanillaKD
    code (losses/dist.py); DIST's own repository does the same. Defaults beta=gamma=T=1 are
    VanillaKD's ImageNet setting. `target` is ignored.
    """

    def __init__(
        self, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0, eps: float = 1e-8
    ):
        super().__init__()
        self.beta, self.gamma, self.temperature, self.eps = beta, gamma, temperature, eps

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        target: torch.Tensor = None,
    ) -> torch.Tensor:
        t = self.temperature
        y_s = (upcast(student_logits) / t).softmax(-1)
        y_t = (upcast(teacher_logits) / t).softmax(-1)
        inter = _pearson_distance(y_s, y_t, self.eps)
        intra = _pearson_distance(y_s.t(), y_t.t(), self.eps)
        return (self.beta * inter + self.gamma * intra) * (t * t)
