"""The paper's loss terms as small pure functions, plus the running feature means L_GD / L_GC use.

Reduction convention (the paper's lambdas assume it): every squared norm is SUMMED over its
pixels or feature dimensions, then AVERAGED over the samples of the minibatch. With lambda1 = 3,
lambda2 = 1, lambda3 = lambda4 = 1e-3 this keeps the paper's balance; mean-reduced MSE would not.
Cross-entropies are averaged over the minibatch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def sq_norm(a: torch.Tensor) -> torch.Tensor:
    """Per-sample squared L2 norm summed over all non-batch dims: (B, ...) -> (B,)."""
    return a.float().pow(2).flatten(1).sum(1)


def kl_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """L_KL = 1/2 sum_j (mu_j^2 + exp(logvar_j) - logvar_j - 1), summed over z dims, mean over batch."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0).sum(1).mean()


def reconstruction_loss(
    x_r: torch.Tensor, x_f: torch.Tensor,
    fd_r: torch.Tensor, fd_f: torch.Tensor,
    fc_r: torch.Tensor, fc_f: torch.Tensor,
) -> torch.Tensor:
    """L_G = 1/2 (||x_r - x_f||^2 + ||f_D(x_r) - f_D(x_f)||^2 + ||f_C(x_r) - f_C(x_f)||^2), mean over batch.

    Pixel L2 plus pairwise feature matching on D's and C's intermediate features.
    """
    return 0.5 * (sq_norm(x_r - x_f) + sq_norm(fd_r - fd_f) + sq_norm(fc_r - fc_f)).mean()


def mean_feature_matching(mean_real: torch.Tensor, mean_fake: torch.Tensor) -> torch.Tensor:
    """L_GD = 1/2 ||mean f_D(x_r) - mean f_D(x_p)||^2 for two (F,) mean vectors."""
    return 0.5 * (mean_real.float() - mean_fake.float()).pow(2).sum()


def class_mean_feature_matching(
    means_real: torch.Tensor, means_fake: torch.Tensor, present: torch.Tensor
) -> torch.Tensor:
    """L_GC = 1/2 sum_c ||mean_c f_C(x_r) - mean_c f_C(x_p)||^2 over the classes marked in `present`.

    means_*: (K, F) per-class means; present: (K,) bool, the classes this term covers.
    """
    diff = (means_real.float() - means_fake.float())[present]
    return 0.5 * diff.pow(2).sum()


def discriminator_loss(logit_real: torch.Tensor, logit_recon: torch.Tensor, logit_prior: torch.Tensor) -> torch.Tensor:
    """L_D = -[log D(x_r) + log(1 - D(x_f)) + log(1 - D(x_p))], each term a batch-mean cross-entropy."""
    bce = F.binary_cross_entropy_with_logits
    return (
        bce(logit_real.float(), torch.ones_like(logit_real, dtype=torch.float32))
        + bce(logit_recon.float(), torch.zeros_like(logit_recon, dtype=torch.float32))
        + bce(logit_prior.float(), torch.zeros_like(logit_prior, dtype=torch.float32))
    )


def classifier_loss(logits_real: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_C = -log P(c_r | x_r), batch-mean cross-entropy on REAL images only."""
    return F.cross_entropy(logits_real.float(), labels)


def nonsaturating_generator_loss(logit_fake: torch.Tensor) -> torch.Tensor:
    """-log D(G(z)): the standard GAN generator loss. NOT used by CVAE-GAN; only by the `cgan` baseline."""
    return F.binary_cross_entropy_with_logits(logit_fake.float(), torch.ones_like(logit_fake, dtype=torch.float32))


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class batch means: features (B, F), labels (B,) -> means (K, F) (0 for absent), counts (K,)."""
    f = features.float()
    sums = torch.zeros(num_classes, f.shape[1], device=f.device, dtype=f.dtype).index_add(0, labels, f)
    counts = torch.bincount(labels, minlength=num_classes).to(f.dtype)
    return sums / counts.clamp(min=1).unsqueeze(1), counts


class RunningMeans(nn.Module):
    """Moving (historical) averages of feature means, one row per group (1 group for D, K for C).

    The estimate used in a loss is  m * old + (1 - m) * batch_mean  where old is the stored (detached)
    running mean, so gradients flow through the current batch only. A group that has never been
    updated uses its batch mean alone. `update` stores the detached estimate afterwards.
    With momentum 0 this reduces to plain minibatch means.
    """

    def __init__(self, groups: int, dim: int, momentum: float):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros(groups, dim))
        self.register_buffer("seen", torch.zeros(groups, dtype=torch.bool))

    def estimate(self, batch_means: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """batch_means: (G, F) (rows of absent groups ignored); present: (G,) bool -> (G, F) estimate.

        Groups absent from the batch keep their stored mean (detached)."""
        old = self.mean.detach()
        m = torch.where(self.seen, torch.full_like(self.seen, self.momentum, dtype=old.dtype), torch.zeros_like(old[:, 0]))
        mixed = m.unsqueeze(1) * old + (1 - m).unsqueeze(1) * batch_means.float()
        return torch.where(present.unsqueeze(1), mixed, old)

    @torch.no_grad()
    def update(self, estimate: torch.Tensor, present: torch.Tensor) -> None:
        self.mean[present] = estimate.detach().float()[present]
        self.seen |= present
