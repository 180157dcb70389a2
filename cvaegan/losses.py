"""The paper's loss terms as small pure functions, plus the running feature means L_GD / L_GC use.

Reduction convention (the paper's lambdas assume it): every squared norm is SUMMED over its
pixels or feature dimensions, then AVERAGED over the samples of the minibatch. With lambda1 = 3,
lambda2 = 1, lambda3 = lambda4 = 1e-3 this keeps the paper's balance; mean-reduced MSE would not.
Cross-entropies are averaged over the minibatch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .images import psnr as image_psnr
from .models import selfsup_targets


def sq_norm(a: torch.Tensor) -> torch.Tensor:
    """Per-sample squared L2 norm summed over all non-batch dims: (B, ...) -> (B,)."""
    return a.float().pow(2).flatten(1).sum(1)


def kl_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """L_KL = 1/2 sum_j (mu_j^2 + exp(logvar_j) - logvar_j - 1), summed over z dims, mean over batch."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0).sum(1).mean()


def reconstruction_loss(
    x_r: torch.Tensor,
    x_f: torch.Tensor,
    fd_r: torch.Tensor,
    fd_f: torch.Tensor,
    fc_r: torch.Tensor,
    fc_f: torch.Tensor,
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


def std_feature_matching(
    mean_real: torch.Tensor,
    sq_real: torch.Tensor,
    mean_fake: torch.Tensor,
    sq_fake: torch.Tensor,
    present: torch.Tensor,
    eps: float = 1e-6,
) -> torch.Tensor:
    """1/2 sum_g ||std_g f(x_r) - std_g f(x_p)||^2 over the groups marked in `present` (not in the paper):
    the second-moment counterpart of L_GD / L_GC. mean_* and sq_*: (G, F) estimates of E[f] and E[f^2]; the
    per-dimension standard deviation is sqrt(max(E[f^2] - E[f]^2, 0) + eps)."""

    def std(mean: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
        return (sq.float() - mean.float().pow(2)).clamp(min=0).add(eps).sqrt()

    diff = (std(mean_real, sq_real) - std(mean_fake, sq_fake))[present]
    return 0.5 * diff.pow(2).sum()


def discriminator_loss(logit_real: torch.Tensor, logit_recon: torch.Tensor, logit_prior: torch.Tensor) -> torch.Tensor:
    """L_D = -[log D(x_r) + log(1 - D(x_f)) + log(1 - D(x_p))], each term a batch-mean cross-entropy."""
    bce = F.binary_cross_entropy_with_logits
    return (
        bce(logit_real.float(), torch.ones_like(logit_real, dtype=torch.float32))
        + bce(logit_recon.float(), torch.zeros_like(logit_recon, dtype=torch.float32))
        + bce(logit_prior.float(), torch.zeros_like(logit_prior, dtype=torch.float32))
    )


def classifier_loss(logits_real: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """L_C = -log P(c_r | x_r), batch-mean cross-entropy on REAL images only (with smoothing > 0: against a
    target of 1 - smoothing on c_r plus smoothing spread over all classes; not in the paper)."""
    return F.cross_entropy(logits_real.float(), labels, label_smoothing=smoothing)


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
        m = torch.where(
            self.seen, torch.full_like(self.seen, self.momentum, dtype=old.dtype), torch.zeros_like(old[:, 0])
        )
        mixed = m.unsqueeze(1) * old + (1 - m).unsqueeze(1) * batch_means.float()
        return torch.where(present.unsqueeze(1), mixed, old)

    @torch.no_grad()
    def update(self, estimate: torch.Tensor, present: torch.Tensor) -> None:
        self.mean[present] = estimate.detach().float()[present]
        self.seen |= present


def selfsup_loss(x: torch.Tensor, whole: torch.Tensor, part: torch.Tensor, quarter: int) -> torch.Tensor:
    """FastGAN's reconstruction term for D (Liu et al. 2021), with L1 in place of LPIPS (no pretrained network
    here): mean absolute error of D's decoded whole image and decoded quarter against x resized to 32 px."""
    target_whole, target_part = selfsup_targets(x.float(), quarter)
    return F.l1_loss(whole.float(), target_whole) + F.l1_loss(part.float(), target_part)


def r1_penalty(logits_real: torch.Tensor, x_real: torch.Tensor) -> torch.Tensor:
    """R1 = mean over the batch of ||d D(x) / d x||^2 at real images (Mescheder et al. 2018); x_real must
    require grad and logits_real come from it. The graph is kept so that the penalty can be minimised."""
    (grad,) = torch.autograd.grad(logits_real.float().sum(), x_real, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


class LeCamAnchors(nn.Module):
    """Moving averages of D's mean logit on real and on generated images: the anchors of the LeCam
    regulariser (Tseng et al., CVPR 2021). Buffers, so that a checkpoint carries them."""

    def __init__(self, decay: float = 0.99):
        super().__init__()
        self.decay = decay
        self.register_buffer("real", torch.zeros(()))
        self.register_buffer("fake", torch.zeros(()))

    @torch.no_grad()
    def update(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> None:
        self.real.lerp_(logits_real.detach().float().mean(), 1 - self.decay)
        self.fake.lerp_(logits_fake.detach().float().mean(), 1 - self.decay)


def lecam_penalty(logits_real: torch.Tensor, logits_fake: torch.Tensor, anchors: LeCamAnchors) -> torch.Tensor:
    """LeCam: mean relu(D(x) - anchor_fake)^2 over real images + mean relu(anchor_real - D(x'))^2 over generated
    ones; it stops D's real and fake logits from drifting apart without bound (a bounded LeCam divergence)."""
    real = F.relu(logits_real.float() - anchors.fake).pow(2).mean()
    fake = F.relu(anchors.real - logits_fake.float()).pow(2).mean()
    return real + fake


# ---------------------------------------------------------------------------------------------------
# Methods as loss objects: each lists its phases and computes one phase's loss from the pure functions
# above. The training loop (cvaegan.train.Trainer.train_step) walks the phases and never branches on
# the method: for each phase it lets only `phase.trains` receive gradients, calls `compute`, and steps
# those networks' optimisers.
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    name: str  # "C", "D", "D_r1", "G", "E" or "GE"
    trains: tuple[str, ...]  # keys of the networks this phase updates ("P": the GAN baselines' projection)


@dataclass
class Batch:
    """One iteration's inputs, plus values computed by one phase and reused by a later one (`cache`).

    x_r: (B, 3, R, R) in [-1, 1]; c_r: (B,) labels; eps: (B, z_dim) reparameterisation noise;
    z_p: (B, z_dim) prior codes; c_p: (B,) prior classes; gen: this step's random generator.
    """

    x_r: torch.Tensor
    c_r: torch.Tensor
    eps: torch.Tensor
    z_p: torch.Tensor
    c_p: torch.Tensor
    gen: torch.Generator
    step: int = 0
    cache: dict = field(default_factory=dict)


@dataclass
class LossContext:
    """What a loss object needs from the trainer. nets: the plain networks (C, D, G, E [, P]); train_nets:
    the same, possibly wrapped for data parallelism (used for the network a phase trains)."""

    nets: dict
    train_nets: dict
    means: nn.ModuleDict
    tcfg: object  # TrainConfig
    num_classes: int
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # D's input augmentation (or identity)
    augments: bool  # whether `augment` changes anything
    autocast: Callable[[], object]
    lecam: LeCamAnchors | None = None  # the LeCam anchors; read only when lecam_weight > 0
    # running E[f^2] of the same four feature sets as `means` (keys d_real, d_fake, c_real, c_fake); read only
    # when std_matching > 0
    moments: nn.ModuleDict | None = None


class MethodLoss:
    """Base class: the phase list and the classifier phase every method with a C shares."""

    phases: tuple[Phase, ...] = ()

    def __init__(self, ctx: LossContext):
        self.ctx = ctx
        self.t = ctx.tcfg

    def phases_at(self, step: int) -> tuple[Phase, ...]:
        return self.phases

    def compute(self, phase: Phase, b: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return getattr(self, "phase_" + phase.name)(b)

    def phase_C(self, b: Batch):
        """L_C on real images only (with c_augment: augmented as D's inputs are)."""
        x = self.ctx.augment(b.x_r, b.gen) if self.t.c_augment else b.x_r
        with self.ctx.autocast():
            logits, _ = self.ctx.train_nets["C"](x)
            loss = classifier_loss(logits, b.c_r, self.t.c_label_smoothing)
        return loss, {"loss/C": loss.item(), "acc/C": (logits.argmax(1) == b.c_r).float().mean().item()}

    def _encode(self, b: Batch, net: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = net(b.x_r, b.c_r)
        return mu, logvar, mu + b.eps * torch.exp(0.5 * logvar)


class CVAEGANLoss(MethodLoss):
    """The paper's method. Per iteration (Algorithm 1): C <- L_C; D <- L_D; G <- lambda2 L_G + lambda3 L_GD +
    lambda4 L_GC; E <- lambda1 L_KL + lambda2 L_G through the updated G. Options: a lazy R1 phase after D
    (r1_gamma), a LeCam term in D's loss (lecam_weight), and joint_ge, one backward for G and E (E's gradient
    then flows through the G of before the update)."""

    def __init__(self, ctx: LossContext):
        super().__init__(ctx)
        gen_phases = (Phase("GE", ("G", "E")),) if self.t.joint_ge else (Phase("G", ("G",)), Phase("E", ("E",)))
        self.phases = (Phase("C", ("C",)), Phase("D", ("D",))) + gen_phases
        self.r1 = Phase("D_r1", ("D",))

    def phases_at(self, step: int) -> tuple[Phase, ...]:
        if self.t.r1_gamma > 0 and step % self.t.r1_every == 0:
            return self.phases[:2] + (self.r1,) + self.phases[2:]
        return self.phases

    def phase_D(self, b: Batch):
        """L_D: real vs reconstructions and prior samples (generated images detached)."""
        n, aug = self.ctx.nets, self.ctx.augment
        with torch.no_grad(), self.ctx.autocast():
            _, _, z = self._encode(b, n["E"])
            x_f = n["G"](z, b.c_r)
            x_p = n["G"](b.z_p, b.c_p)
        b.cache["z"] = z
        size = b.x_r.shape[0]
        selfsup = hasattr(n["D"], "decode_whole")
        scalars = {}
        with self.ctx.autocast():
            x_r = aug(b.x_r, b.gen)
            d_in = torch.cat([x_r, aug(x_f, b.gen), aug(x_p, b.gen)])
            if selfsup:  # FastGAN: D must also rebuild the (augmented) real photos it was shown
                quarter = int(torch.randint(0, 4, (1,), generator=b.gen, device=b.gen.device))
                logits, _, whole, part = self.ctx.train_nets["D"](d_in, decode=size, quarter=quarter)
            else:
                logits, _ = self.ctx.train_nets["D"](d_in)
            l_r, l_f, l_p = logits.split(size)
            loss = discriminator_loss(l_r, l_f, l_p)
            if self.t.lecam_weight > 0:
                l_gen = torch.cat([l_f, l_p])
                reg = lecam_penalty(l_r, l_gen, self.ctx.lecam)
                loss = loss + self.t.lecam_weight * reg
                self.ctx.lecam.update(l_r, l_gen)
                scalars["loss/D_lecam"] = reg.item()
            if selfsup:
                rec = selfsup_loss(x_r, whole, part, quarter)
                loss = loss + rec
                scalars["loss/D_selfsup"] = rec.item()
        return loss, {
            "loss/D": loss.item(),
            "acc/D_real": (l_r > 0).float().mean().item(),
            "acc/D_fake": 0.5 * ((l_f < 0).float().mean() + (l_p < 0).float().mean()).item(),
            **scalars,
        }

    def phase_D_r1(self, b: Batch):
        """gamma / 2 * R1, times the interval (lazy regularisation, as in StyleGAN2)."""
        x = b.x_r.detach().requires_grad_(True)
        logits, _ = self.ctx.train_nets["D"](x)
        penalty = r1_penalty(logits, x)
        return 0.5 * self.t.r1_gamma * self.t.r1_every * penalty, {"loss/D_r1": penalty.item()}

    def _real_features(self, b: Batch) -> None:
        """D and C act as fixed feature extractors from here on: eval mode, so real and generated images are
        normalised by the same (running) statistics. Real features are computed once per iteration."""
        n = self.ctx.nets
        n["D"].eval()
        n["C"].eval()
        if "fd_r" in b.cache:
            return
        with torch.no_grad(), self.ctx.autocast():
            _, fd_r = n["D"](b.x_r)
            _, fc_r = n["C"](b.x_r)
            # L_GD compares with augmented prior samples, so its real mean is taken on augmented reals too
            fd_r_mean_in = n["D"](self.ctx.augment(b.x_r, b.gen))[1] if self.ctx.augments else fd_r
        b.cache.update(fd_r=fd_r, fc_r=fc_r, fd_r_mean_in=fd_r_mean_in)

    def _pairwise(self, b: Batch, x_f: torch.Tensor) -> torch.Tensor:
        n = self.ctx.nets
        _, fd_f = n["D"](x_f)
        _, fc_f = n["C"](x_f)
        return reconstruction_loss(b.x_r, x_f, b.cache["fd_r"], fd_f, b.cache["fc_r"], fc_f)

    def _mean_terms(self, b: Batch, x_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """L_GD and L_GC of the prior samples against the running real means; stores the new estimates. Also
        the std-matching term (std_matching > 0; already weighted, else 0) and its scalars."""
        n, t, k = self.ctx.nets, self.t, self.ctx.num_classes
        _, fd_p = n["D"](self.ctx.augment(x_p, b.gen))
        _, fc_p = n["C"](x_p)
        one = torch.ones(1, dtype=torch.bool, device=x_p.device)
        # the four feature sets, with their labels (None: D's features, one group for the whole batch)
        sets = {
            "d_real": (b.cache["fd_r_mean_in"], None),
            "d_fake": (fd_p, None),
            "c_real": (b.cache["fc_r"], b.c_r),
            "c_fake": (fc_p, b.c_p),
        }
        present = {key: one if y is None else torch.bincount(y, minlength=k) > 0 for key, (_, y) in sets.items()}

        def batch_means(power: int) -> dict[str, torch.Tensor]:
            """E[f^power] of each set in this batch: (1, F) for D, (K, F) per class for C."""
            return {
                key: f.float().pow(power).mean(0, keepdim=True)
                if y is None
                else class_means(f.float().pow(power), y, k)[0]
                for key, (f, y) in sets.items()
            }

        def estimates(store: nn.ModuleDict, power: int) -> dict[str, torch.Tensor]:
            return {key: store[key].estimate(m, present[key]) for key, m in batch_means(power).items()}

        est = estimates(self.ctx.means, 1)
        covered = present["c_fake"] & (self.ctx.means["c_real"].seen | present["c_real"])
        loss_gd = mean_feature_matching(est["d_real"][0], est["d_fake"][0])
        loss_gc = class_mean_feature_matching(est["c_real"], est["c_fake"], covered)
        stores = [(self.ctx.means, est)]
        extra, scalars = loss_gd.new_zeros(()), {}
        if t.std_matching > 0:
            sq = estimates(self.ctx.moments, 2)
            std_gd = std_feature_matching(est["d_real"], sq["d_real"], est["d_fake"], sq["d_fake"], one)
            std_gc = std_feature_matching(est["c_real"], sq["c_real"], est["c_fake"], sq["c_fake"], covered)
            extra = t.std_matching * (t.lambda3 * std_gd + t.lambda4 * std_gc)
            scalars = {"loss/G_std_fm_D": std_gd.item(), "loss/G_std_fm_C": std_gc.item()}
            stores.append((self.ctx.moments, sq))
        for store, values in stores:
            for key in sets:
                store[key].update(values[key], present[key])
        return loss_gd, loss_gc, extra, scalars

    def phase_G(self, b: Batch):
        """lambda2 L_G + lambda3 L_GD + lambda4 L_GC; the generator never sees -log D(G(z))."""
        self._real_features(b)
        t, size = self.t, b.x_r.shape[0]
        with self.ctx.autocast():
            x_f, x_p = self.ctx.train_nets["G"](
                torch.cat([b.cache["z"].detach(), b.z_p]), torch.cat([b.c_r, b.c_p])
            ).split(size)
            loss_rec = self._pairwise(b, x_f)
            loss_gd, loss_gc, loss_std, scalars = self._mean_terms(b, x_p)
        loss = t.lambda2 * loss_rec + t.lambda3 * loss_gd + t.lambda4 * loss_gc + loss_std
        return loss, {
            **scalars,
            "loss/G_recon": loss_rec.item(),
            "loss/G_mean_fm_D": loss_gd.item(),
            "loss/G_mean_fm_C": loss_gc.item(),
            "loss/G": loss.item(),
        }

    def phase_E(self, b: Batch):
        """lambda1 L_KL + lambda2 L_G through the just-updated G (frozen here), D and C."""
        t = self.t
        with self.ctx.autocast():
            mu, logvar, z = self._encode(b, self.ctx.train_nets["E"])
            x_f = self.ctx.nets["G"](z, b.c_r)
            loss_rec = self._pairwise(b, x_f)
            loss_kl = kl_loss(mu, logvar)
            loss = t.lambda1 * loss_kl + t.lambda2 * loss_rec
        return loss, {"loss/KL": loss_kl.item(), "loss/E": loss.item(), "psnr/recon": _psnr(b.x_r, x_f)}

    def phase_GE(self, b: Batch):
        """joint_ge: one graph for both: G's terms and E's terms share the reconstruction L_G."""
        self._real_features(b)
        t, size = self.t, b.x_r.shape[0]
        with self.ctx.autocast():
            mu, logvar, z = self._encode(b, self.ctx.train_nets["E"])
            x_f, x_p = self.ctx.train_nets["G"](torch.cat([z, b.z_p]), torch.cat([b.c_r, b.c_p])).split(size)
            loss_rec = self._pairwise(b, x_f)
            loss_gd, loss_gc, loss_std, scalars = self._mean_terms(b, x_p)
            loss_kl = kl_loss(mu, logvar)
        loss_g = t.lambda2 * loss_rec + t.lambda3 * loss_gd + t.lambda4 * loss_gc + loss_std
        loss = loss_g + t.lambda1 * loss_kl
        return loss, {
            **scalars,
            "loss/G_recon": loss_rec.item(),
            "loss/G_mean_fm_D": loss_gd.item(),
            "loss/G_mean_fm_C": loss_gc.item(),
            "loss/G": loss_g.item(),
            "loss/KL": loss_kl.item(),
            "loss/E": (t.lambda1 * loss_kl + t.lambda2 * loss_rec).item(),
            "psnr/recon": _psnr(b.x_r, x_f),
        }


class CVAELoss(MethodLoss):
    """Table 1's "cvae": G <- lambda2 * 1/2 ||x_r - G(z, c)||^2, then E <- lambda1 KL + the same pixel loss
    through the updated G. No D, no C. With_classifier=True (the warm start, `pretrain_steps`) also trains C."""

    def __init__(self, ctx: LossContext, with_classifier: bool = False):
        super().__init__(ctx)
        self.phases = ((Phase("C", ("C",)),) if with_classifier else ()) + (Phase("G", ("G",)), Phase("E", ("E",)))

    def phase_G(self, b: Batch):
        with torch.no_grad(), self.ctx.autocast():
            _, _, z = self._encode(b, self.ctx.nets["E"])
        with self.ctx.autocast():
            x_f = self.ctx.train_nets["G"](z, b.c_r)
            loss = self.t.lambda2 * 0.5 * sq_norm(b.x_r.float() - x_f.float()).mean()
        return loss, {"loss/G_recon": loss.item(), "loss/G": loss.item()}

    def phase_E(self, b: Batch):
        with self.ctx.autocast():
            mu, logvar, z = self._encode(b, self.ctx.train_nets["E"])
            x_f = self.ctx.nets["G"](z, b.c_r)
            loss_rec = 0.5 * sq_norm(b.x_r.float() - x_f.float()).mean()
            loss_kl = kl_loss(mu, logvar)
            loss = self.t.lambda1 * loss_kl + self.t.lambda2 * loss_rec
        return loss, {"loss/KL": loss_kl.item(), "loss/E": loss.item(), "psnr/recon": _psnr(b.x_r, x_f)}


class CGANLoss(MethodLoss):
    """Table 1's "cgan" and "fm-cgan": D <- -[log D(x_r, c_r) + log(1 - D(G(z_p, c_p), c_p))] with D made
    class-conditional by a projection P (Miyato & Koyama 2018), trained with D; G <- -log D(G(z_p, c_p), c_p)
    (cgan) or 1/2 ||mean f_D(x_r) - mean f_D(x_p)||^2 (fm-cgan, the same running means as L_GD). No E, no C."""

    phases = (Phase("D", ("D", "P")), Phase("G", ("G",)))

    def __init__(self, ctx: LossContext, feature_matching: bool):
        super().__init__(ctx)
        self.feature_matching = feature_matching

    def _conditional(self, x: torch.Tensor, c: torch.Tensor, net: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        logits, f = net(x)
        return logits.view(-1) + (self.ctx.nets["P"](c) * f.float()).sum(1), f

    def phase_D(self, b: Batch):
        aug, size = self.ctx.augment, b.x_r.shape[0]
        with torch.no_grad(), self.ctx.autocast():
            x_p = self.ctx.nets["G"](b.z_p, b.c_p)
        with self.ctx.autocast():
            logits, _ = self._conditional(
                torch.cat([aug(b.x_r, b.gen), aug(x_p, b.gen)]), torch.cat([b.c_r, b.c_p]), self.ctx.train_nets["D"]
            )
            l_r, l_p = logits.float().split(size)
            loss = F.binary_cross_entropy_with_logits(l_r, torch.ones_like(l_r)) + F.binary_cross_entropy_with_logits(
                l_p, torch.zeros_like(l_p)
            )
        return loss, {
            "loss/D": loss.item(),
            "acc/D_real": (l_r > 0).float().mean().item(),
            "acc/D_fake": (l_p < 0).float().mean().item(),
        }

    def phase_G(self, b: Batch):
        aug, D, means = self.ctx.augment, self.ctx.nets["D"], self.ctx.means
        with self.ctx.autocast():
            x_p = self.ctx.train_nets["G"](b.z_p, b.c_p)
            if not self.feature_matching:
                lg, _ = self._conditional(aug(x_p, b.gen), b.c_p, D)
                loss = nonsaturating_generator_loss(lg)
            else:
                D.eval()
                with torch.no_grad():
                    _, fd_r = D(aug(b.x_r, b.gen))
                _, fd_p = D(aug(x_p, b.gen))
                one = torch.ones(1, dtype=torch.bool, device=x_p.device)
                d_real = means["d_real"].estimate(fd_r.float().mean(0, keepdim=True), one)
                d_fake = means["d_fake"].estimate(fd_p.float().mean(0, keepdim=True), one)
                loss = mean_feature_matching(d_real[0], d_fake[0])
                means["d_real"].update(d_real, one)
                means["d_fake"].update(d_fake, one)
        return loss, {"loss/G": loss.item()}


def method_loss(ctx: LossContext) -> MethodLoss:
    """The loss object of the run's method (`variant`)."""
    v = ctx.tcfg.variant
    if v == "cvae-gan":
        return CVAEGANLoss(ctx)
    if v == "cvae":
        return CVAELoss(ctx)
    if v in ("cgan", "fm-cgan"):
        return CGANLoss(ctx, feature_matching=v == "fm-cgan")
    raise ValueError(f"unknown variant {v!r}")


def _psnr(x_r: torch.Tensor, x_f: torch.Tensor) -> float:
    """Batch-mean reconstruction PSNR (dB) for the training log."""
    return image_psnr(x_f, x_r).mean().item()
