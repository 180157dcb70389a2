"""The training loop (paper's Algorithm 1): per iteration C -> D -> G -> E, each loss updating only its network.

Run folder layout: train_config.json, model_config.json, metrics.jsonl, samples/step_XXXXXXX.png,
checkpoint.pt (resume state, torch.load(weights_only=True)), split.json, export/ (published weights).
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from . import losses as L
from .augment import diff_augment, parse_policy
from .config import ModelConfig, TrainConfig
from .data import LabelledImages, split_indices
from .hub import save_pretrained
from .images import make_grid, save_png, uint8_to_float
from .models import CVAEGAN
from .seeds import step_generator, z_from_seeds

CHECKPOINT = "checkpoint.pt"
POSTFIX = {"loss/C": "C", "loss/D": "D", "loss/G_recon": "recon", "loss/KL": "KL", "acc/C": "accC", "psnr/recon": "psnr"}


def recon_psnr(x_r: torch.Tensor, x_f: torch.Tensor) -> float:
    """Batch-mean PSNR (dB) of reconstructions, images in [-1, 1] (peak-to-peak 2, so peak^2 = 4)."""
    mse = (x_r.float() - x_f.detach().float()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(4.0 / mse.clamp(min=1e-10))).mean().item()


class TrainError(RuntimeError):
    """Training cannot start or continue as asked; the message says how to fix it."""


def set_requires_grad(nets: dict[str, nn.Module], trainable: str | None) -> None:
    """Let only `trainable` (a key of nets) receive gradients; freeze all others."""
    for name, net in nets.items():
        for p in net.parameters():
            p.requires_grad_(name == trainable)


def batch_indices(n: int, batch: int, seed: int, step: int) -> torch.Tensor:
    """Indices of the images of global batch `step`: a fresh seeded permutation each epoch (drop last)."""
    per_epoch = max(1, n // batch)
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
    return perm[k * batch:(k + 1) * batch]


def lr_factor(tcfg: TrainConfig, step: int) -> float:
    """Multiplier of the base learning rate at `step` (warm-up, then constant or cosine to 10%)."""
    f = 1.0
    if tcfg.warmup_steps and step < tcfg.warmup_steps:
        f = (step + 1) / tcfg.warmup_steps
    if tcfg.lr_schedule == "cosine":
        f *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step, tcfg.steps) / tcfg.steps))
    return f


def atomic_torch_save(obj, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise TrainError(f"could not write {path} ({e}); the previous checkpoint is intact. "
                         "Free disk space or make the run folder writable, then --resume") from e


class Trainer:
    """Holds the networks, optimisers, running feature means and the step counter of one run."""

    def __init__(self, model: CVAEGAN, tcfg: TrainConfig, device: torch.device, rank: int = 0, world: int = 1):
        self.model, self.tcfg, self.device = model, tcfg, device
        self.rank, self.world = rank, world
        self.cfg = model.config
        self.policy = parse_policy(tcfg.diffaugment)
        self.nets: dict[str, nn.Module] = {
            "C": model.classifier, "D": model.discriminator, "G": model.generator, "E": model.encoder}
        self.cuda = device.type == "cuda"
        if self.cuda:
            for net in self.nets.values():
                net.to(memory_format=torch.channels_last)
        # Data-parallel wrappers, used only in the phase that trains each network (others call .module).
        self.train_nets = {k: (DDP(v) if world > 1 else v) for k, v in self.nets.items()}
        # GAN ablations: D is made class-conditional by a projection embedding trained with D
        self.proj = (nn.Embedding(model.config.num_classes, model.config.feature_dim).to(device)
                     if tcfg.variant in ("cgan", "fm-cgan") else None)
        if self.proj is not None:
            nn.init.normal_(self.proj.weight, std=0.02)
        self.opt = {k: torch.optim.Adam(list(v.parameters()) + (list(self.proj.parameters())
                                        if k == "D" and self.proj is not None else []), lr=tcfg.lr, betas=tcfg.betas)
                    for k, v in self.nets.items()}
        f, k = self.cfg.feature_dim, self.cfg.num_classes
        self.means = nn.ModuleDict({
            "d_real": L.RunningMeans(1, f, tcfg.momentum), "d_fake": L.RunningMeans(1, f, tcfg.momentum),
            "c_real": L.RunningMeans(k, f, tcfg.momentum), "c_fake": L.RunningMeans(k, f, tcfg.momentum),
        }).to(device)
        # EMA copies of G and E: exported together, so that E still inverts the G it ships with.
        self.ema = copy.deepcopy(model.generator).eval().requires_grad_(False) if tcfg.ema_decay else None
        self.ema_e = copy.deepcopy(model.encoder).eval().requires_grad_(False) if tcfg.ema_decay else None
        self.calib: torch.Tensor | None = None  # (N, 3, R, R) uint8 real images to re-estimate EMA E's BatchNorm
        self.step = 0

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else nullcontext()

    def _update(self, name: str, loss: torch.Tensor) -> None:
        opt = self.opt[name]
        for net in self.nets.values():  # stale gradients of other phases never reach a step
            net.zero_grad(set_to_none=True)
        if self.proj is not None:
            self.proj.zero_grad(set_to_none=True)
        loss.backward()
        if self.tcfg.grad_clip:
            nn.utils.clip_grad_norm_(self.nets[name].parameters(), self.tcfg.grad_clip)
        opt.step()

    def _aug(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return diff_augment(x, self.policy, gen) if self.policy else x

    def train_step(self, x_r: torch.Tensor, c_r: torch.Tensor, gen: torch.Generator,
                   noise: dict[str, torch.Tensor]) -> dict[str, float]:
        """One iteration. x_r: (B, 3, R, R) in [-1, 1]; c_r: (B,) labels; noise: eps, z_p, c_p for this rank.

        Phases follow Algorithm 1; each block lets only its network receive gradients.
        """
        C, D, G, E = (self.nets[k] for k in "CDGE")
        tC, tD, tG, tE = (self.train_nets[k] for k in "CDGE")
        eps, z_p, c_p = noise["eps"], noise["z_p"], noise["c_p"]
        t = self.tcfg
        for name, opt in self.opt.items():
            for group in opt.param_groups:
                group["lr"] = t.lr * lr_factor(t, self.step)
        log: dict[str, float] = {}
        for net in self.nets.values():
            net.train()
        if t.variant == "cvae":
            return self._step_cvae(x_r, c_r, eps, log)
        if t.variant in ("cgan", "fm-cgan"):
            return self._step_cgan(x_r, c_r, z_p, c_p, gen, log)

        # 1. C <- grad L_C  (real images only)
        set_requires_grad(self.nets, "C")
        with self.autocast():
            logits, _ = tC(x_r)
            loss_c = L.classifier_loss(logits, c_r)
        self._update("C", loss_c)
        log["loss/C"] = loss_c.item()
        log["acc/C"] = (logits.argmax(1) == c_r).float().mean().item()

        # 2. D <- grad L_D  (real vs reconstructions and prior samples; generated images detached)
        set_requires_grad(self.nets, "D")
        with torch.no_grad(), self.autocast():
            mu, logvar = E(x_r, c_r)
            z = mu + eps * torch.exp(0.5 * logvar)
            x_f = G(z, c_r)
            x_p = G(z_p, c_p)
        b = x_r.shape[0]
        with self.autocast():
            d_in = torch.cat([self._aug(x_r, gen), self._aug(x_f, gen), self._aug(x_p, gen)])
            d_logits, _ = tD(d_in)
            l_r, l_f, l_p = d_logits.split(b)
            loss_d = L.discriminator_loss(l_r, l_f, l_p)
        self._update("D", loss_d)
        log["loss/D"] = loss_d.item()
        log["acc/D_real"] = (l_r > 0).float().mean().item()
        log["acc/D_fake"] = 0.5 * ((l_f < 0).float().mean() + (l_p < 0).float().mean()).item()

        # D and C act as fixed feature extractors from here on: eval mode, so real and generated
        # images are normalised by the same (running) BatchNorm statistics.
        D.eval()
        C.eval()
        with torch.no_grad(), self.autocast():
            _, fd_r = D(x_r)
            _, fc_r = C(x_r)
            _, fd_r_mean_in = D(self._aug(x_r, gen)) if self.policy else (None, fd_r)

        # 3. G <- grad (lambda2 L_G + lambda3 L_GD + lambda4 L_GC); the generator never sees -log D(G(z)).
        set_requires_grad(self.nets, "G")
        with self.autocast():
            x_both = tG(torch.cat([z.detach(), z_p]), torch.cat([c_r, c_p]))
            x_f, x_p = x_both.split(b)
            _, fd_f = D(x_f)
            _, fc_f = C(x_f)
            loss_rec = L.reconstruction_loss(x_r, x_f, fd_r, fd_f, fc_r, fc_f)
            _, fd_p = D(self._aug(x_p, gen))
            _, fc_p = C(x_p)
        one = torch.ones(1, dtype=torch.bool, device=self.device)
        d_real = self.means["d_real"].estimate(fd_r_mean_in.float().mean(0, keepdim=True), one)
        d_fake = self.means["d_fake"].estimate(fd_p.float().mean(0, keepdim=True), one)
        loss_gd = L.mean_feature_matching(d_real[0], d_fake[0])
        k = self.cfg.num_classes
        real_cm, real_n = L.class_means(fc_r, c_r, k)
        fake_cm, fake_n = L.class_means(fc_p, c_p, k)
        c_real = self.means["c_real"].estimate(real_cm, real_n > 0)
        c_fake = self.means["c_fake"].estimate(fake_cm, fake_n > 0)
        covered = (fake_n > 0) & (self.means["c_real"].seen | (real_n > 0))
        loss_gc = L.class_mean_feature_matching(c_real, c_fake, covered)
        loss_g = t.lambda2 * loss_rec + t.lambda3 * loss_gd + t.lambda4 * loss_gc
        self._update("G", loss_g)
        for key, est, present in (("d_real", d_real, one), ("d_fake", d_fake, one),
                                  ("c_real", c_real, real_n > 0), ("c_fake", c_fake, fake_n > 0)):
            self.means[key].update(est, present)
        if self.ema is not None:
            self._update_ema()
        log["loss/G_recon"] = loss_rec.item()
        log["loss/G_mean_fm_D"] = loss_gd.item()
        log["loss/G_mean_fm_C"] = loss_gc.item()
        log["loss/G"] = loss_g.item()

        # 4. E <- grad (lambda1 L_KL + lambda2 L_G), through the updated (frozen) G, D and C.
        set_requires_grad(self.nets, "E")
        with self.autocast():
            mu, logvar = tE(x_r, c_r)
            z = mu + eps * torch.exp(0.5 * logvar)
            x_f = G(z, c_r)
            _, fd_f = D(x_f)
            _, fc_f = C(x_f)
            loss_rec_e = L.reconstruction_loss(x_r, x_f, fd_r, fd_f, fc_r, fc_f)
            loss_kl = L.kl_loss(mu, logvar)
            loss_e = t.lambda1 * loss_kl + t.lambda2 * loss_rec_e
        self._update("E", loss_e)
        set_requires_grad(self.nets, None)
        log["loss/KL"] = loss_kl.item()
        log["loss/E"] = loss_e.item()
        log["psnr/recon"] = recon_psnr(x_r, x_f)
        self.step += 1
        return log

    def _finish(self, log: dict[str, float]) -> dict[str, float]:
        if self.ema is not None:
            self._update_ema()
        self.step += 1
        return log

    def _step_cvae(self, x_r, c_r, eps, log):
        """Ablation "cvae": G <- grad lambda2 * 1/2||x_r - G(z, c)||^2, then E <- grad (lambda1 KL + the same
        pixel loss) through the updated G. No D, no C (they stay untrained)."""
        t, E, G = self.tcfg, self.nets["E"], self.nets["G"]
        with torch.no_grad(), self.autocast():
            mu, logvar = E(x_r, c_r)
            z = mu + eps * torch.exp(0.5 * logvar)
        set_requires_grad(self.nets, "G")
        with self.autocast():
            loss_g = t.lambda2 * 0.5 * L.sq_norm(x_r.float() - self.train_nets["G"](z, c_r).float()).mean()
        self._update("G", loss_g)
        set_requires_grad(self.nets, "E")
        with self.autocast():
            mu, logvar = self.train_nets["E"](x_r, c_r)
            x_f = G(mu + eps * torch.exp(0.5 * logvar), c_r)
            loss_rec = 0.5 * L.sq_norm(x_r.float() - x_f.float()).mean()
            loss_kl = L.kl_loss(mu, logvar)
            loss_e = t.lambda1 * loss_kl + t.lambda2 * loss_rec
        self._update("E", loss_e)
        set_requires_grad(self.nets, None)
        log.update({"loss/G_recon": loss_g.item(), "loss/G": loss_g.item(), "loss/KL": loss_kl.item(),
                    "loss/E": loss_e.item()})
        log["psnr/recon"] = recon_psnr(x_r, x_f)
        return self._finish(log)

    def _d_cond(self, x: torch.Tensor, c: torch.Tensor, net: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        logits, f = net(x)
        return logits.view(-1) + (self.proj(c) * f.float()).sum(1), f

    def _step_cgan(self, x_r, c_r, z_p, c_p, gen, log):
        """Ablations "cgan" / "fm-cgan": D <- grad -[log D(x_r, c_r) + log(1 - D(G(z_p, c_p), c_p))];
        G <- grad -log D(G(z_p, c_p), c_p) (cgan) or 1/2||mean f_D(x_r) - mean f_D(x_p)||^2 (fm-cgan,
        with the same running means as L_GD). No E, no C (they stay untrained)."""
        t, D = self.tcfg, self.nets["D"]
        with torch.no_grad(), self.autocast():
            x_p = self.nets["G"](z_p, c_p)
        set_requires_grad(self.nets, "D")
        for p in self.proj.parameters():
            p.requires_grad_(True)
        b = x_r.shape[0]
        with self.autocast():
            logits, _ = self._d_cond(torch.cat([self._aug(x_r, gen), self._aug(x_p, gen)]),
                                     torch.cat([c_r, c_p]), self.train_nets["D"])
            l_r, l_p = logits.float().split(b)
            loss_d = (F.binary_cross_entropy_with_logits(l_r, torch.ones_like(l_r))
                      + F.binary_cross_entropy_with_logits(l_p, torch.zeros_like(l_p)))
        self._update("D", loss_d)
        for p in self.proj.parameters():
            p.requires_grad_(False)
        log.update({"loss/D": loss_d.item(), "acc/D_real": (l_r > 0).float().mean().item(),
                    "acc/D_fake": (l_p < 0).float().mean().item()})
        set_requires_grad(self.nets, "G")
        with self.autocast():
            x_p = self.train_nets["G"](z_p, c_p)
            if t.variant == "cgan":
                lg, _ = self._d_cond(self._aug(x_p, gen), c_p, D)
                loss_g = L.nonsaturating_generator_loss(lg)
            else:
                D.eval()
                with torch.no_grad():
                    _, fd_r = D(self._aug(x_r, gen))
                _, fd_p = D(self._aug(x_p, gen))
                one = torch.ones(1, dtype=torch.bool, device=self.device)
                d_real = self.means["d_real"].estimate(fd_r.float().mean(0, keepdim=True), one)
                d_fake = self.means["d_fake"].estimate(fd_p.float().mean(0, keepdim=True), one)
                loss_g = L.mean_feature_matching(d_real[0], d_fake[0])
        self._update("G", loss_g)
        if t.variant == "fm-cgan":
            self.means["d_real"].update(d_real, one)
            self.means["d_fake"].update(d_fake, one)
        set_requires_grad(self.nets, None)
        log["loss/G"] = loss_g.item()
        return self._finish(log)

    @torch.no_grad()
    def _update_ema(self) -> None:
        d = self.tcfg.ema_decay
        for ema, live in ((self.ema, self.nets["G"]), (self.ema_e, self.nets["E"])):
            for pe, p in zip(ema.parameters(), live.parameters()):
                pe.lerp_(p.detach().to(pe.dtype), 1 - d)
            for be, b in zip(ema.buffers(), live.buffers()):
                be.copy_(b)

    def ema_encoder(self) -> nn.Module:
        """The EMA of E with BatchNorm statistics re-estimated on real training images (self.calib);
        without calibration images, the live E's statistics."""
        if self.calib is None:
            return copy.deepcopy(self.ema_e).eval()
        return recalibrate_encoder(self.ema_e, self.calib, self.device)

    @torch.no_grad()
    def d_accuracy(self, images: torch.Tensor) -> float:
        """D's accuracy on real uint8 images (logit > 0), D in eval mode: compared between training
        and held-out images it shows whether D memorises the training set."""
        D = self.nets["D"]
        was = D.training
        D.eval()
        with self.autocast():
            logits, _ = D(uint8_to_float(images).to(self.device))
        D.train(was)
        return (logits.float() > 0).float().mean().item()

    def export_generator(self) -> nn.Module:
        """The G to publish and sample from (see export_model)."""
        if self.ema is None:
            return self.model.generator
        return recalibrate_batchnorm(self.ema, self.cfg, self.device)

    def export_model(self) -> CVAEGAN:
        """The model to publish: G, or with the EMA option its EMA with BatchNorm statistics
        re-estimated on prior samples (an average of weights has no statistics of its own)."""
        if self.ema is None:  # the live G keeps the running statistics it was trained with
            return self.model
        out = copy.copy(self.model)
        out.generator = self.export_generator()
        out.encoder = self.ema_encoder()
        return out

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "nets": {k: v.state_dict() for k, v in self.nets.items()},
            "opt": {k: v.state_dict() for k, v in self.opt.items()},
            "means": self.means.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "ema_E": self.ema_encoder().state_dict() if self.ema_e is not None else None,
            "proj": self.proj.state_dict() if self.proj is not None else None,
            "model_config": self.cfg.to_dict(),
            "train_config": self.tcfg.to_dict(),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        for k, net in self.nets.items():
            net.load_state_dict(state["nets"][k])
        for k, opt in self.opt.items():
            opt.load_state_dict(state["opt"][k])
        self.means.load_state_dict(state["means"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise TrainError("the checkpoint was written without --ema-decay; resume without it")
            self.ema.load_state_dict(state["ema"])
            # checkpoints from before the EMA of E start it from the live E
            self.ema_e.load_state_dict(state.get("ema_E") or state["nets"]["E"])
        if self.proj is not None:
            self.proj.load_state_dict(state["proj"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])


@torch.no_grad()
def recalibrate_batchnorm(generator: nn.Module, cfg: ModelConfig, device: torch.device, batches: int = 16,
                          batch_size: int = 64, seed: int = 0) -> nn.Module:
    """A copy of G whose BatchNorm running statistics are re-estimated on prior samples.

    Used for the EMA of G: an average of weights has no running statistics of its own (copying the
    live G's gave flat, colourless samples). Cumulative average over `batches` batches of
    z ~ N(0, I), c uniform, fixed seed.
    """
    g = copy.deepcopy(generator).to(device)
    bns = [m for m in g.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    g.train()
    gen = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        z = torch.randn(batch_size, cfg.z_dim, generator=gen).to(device)
        c = torch.randint(0, cfg.num_classes, (batch_size,), generator=gen).to(device)
        g(z, c)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    return g.eval()


@torch.no_grad()
def recalibrate_encoder(encoder: nn.Module, images: torch.Tensor, device: torch.device,
                        batch_size: int = 64) -> nn.Module:
    """A copy of E whose BatchNorm statistics are re-estimated (cumulative average) on real uint8
    `images` (the class input does not reach E's BatchNorm layers, which sit in the image trunk)."""
    e = copy.deepcopy(encoder).to(device)
    bns = [m for m in e.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    e.train()
    for i in range(0, len(images), batch_size):
        e.trunk(uint8_to_float(images[i:i + batch_size]).to(device))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    return e.eval()


def grid_classes(num_classes: int, rows: int) -> list[int]:
    """`rows` class indices spread evenly over 0..K-1 (all classes when K <= rows)."""
    if num_classes <= rows:
        return list(range(num_classes))
    return [round(i * (num_classes - 1) / (rows - 1)) for i in range(rows)] if rows > 1 else [0]


@torch.no_grad()
def sample_grid(generator: nn.Module, cfg: ModelConfig, classes: list[int], seeds: list[int],
                device: torch.device) -> "Image.Image":  # noqa: F821
    """Rows = classes, columns = seeds; G in eval mode; the same (z, c) every time."""
    was_training = generator.training
    generator.eval()
    z = z_from_seeds(seeds, cfg.z_dim).to(device)
    rows = [generator(z, torch.full((len(seeds),), c, dtype=torch.long, device=device)).float() for c in classes]
    generator.train(was_training)
    return make_grid(torch.cat(rows), ncol=len(seeds))


def _init_distributed(tcfg: TrainConfig) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = tcfg.device == "cuda" or (tcfg.device == "auto" and torch.cuda.is_available())
    if tcfg.device == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda was asked for but CUDA is not available; use --device cpu or auto")
    if world > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if want_cuda else "gloo")
        rank = dist.get_rank()
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if want_cuda:
            torch.cuda.set_device(local)
            return rank, world, torch.device("cuda", local)
        return rank, world, torch.device("cpu")
    return 0, 1, torch.device("cuda" if want_cuda else "cpu")


def train(data: LabelledImages, out: str | os.PathLike, tcfg: TrainConfig, mcfg: ModelConfig | None = None,
          resume: bool = False, progress: bool = True, on_step=None) -> Path:
    """Train on decoded images and write everything into the run folder `out`; returns the export folder.

    mcfg None builds the default config for 64 px from the data's classes. With resume=True the run
    continues from out/checkpoint.pt (its configs win over the arguments). `on_step(step, log)` is
    called after every iteration (tests use it).
    """
    out = Path(out)
    rank, world, device = _init_distributed(tcfg)
    ckpt_path = out / CHECKPOINT
    state = None
    if resume:
        if not ckpt_path.is_file():
            raise TrainError(f"--resume: no {ckpt_path}; start a new run without --resume")
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        mcfg = ModelConfig.from_dict(state["model_config"])
        old = TrainConfig.from_dict(state["train_config"])
        old.steps, old.device = tcfg.steps, tcfg.device  # a resumed run may be extended or moved
        tcfg = old
    elif ckpt_path.exists():
        raise TrainError(f"{out} already holds a run ({CHECKPOINT}); pass --resume to continue it "
                         "or choose another --out")
    if mcfg is None:
        mcfg = ModelConfig.for_resolution(64, data.num_classes)
    if mcfg.num_classes != data.num_classes:
        raise TrainError(f"the model has {mcfg.num_classes} classes but the data has {data.num_classes}")
    mcfg.class_names, mcfg.class_folders = list(data.class_names), list(data.class_folders)
    if data.images.shape[-1] != mcfg.resolution:
        raise TrainError(f"images are {data.images.shape[-1]} px but the model is {mcfg.resolution} px")

    train_idx, val_idx = split_indices(data.labels, tcfg.val_fraction, seed=1234)
    images, labels = data.images[train_idx], data.labels[train_idx]
    n = len(labels)
    if n < tcfg.batch_size:
        raise TrainError(f"only {n} training images but batch size {tcfg.batch_size}; lower --batch-size")
    if tcfg.batch_size % world:
        raise TrainError(f"batch size {tcfg.batch_size} must be divisible by the number of processes {world}")
    if rank == 0:
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / "samples").mkdir(exist_ok=True)
            if state is None:
                (out / "train_config.json").write_text(json.dumps(tcfg.to_dict(), indent=2) + "\n")
                (out / "model_config.json").write_text(mcfg.to_json())
                (out / "split.json").write_text(json.dumps({
                    "val_fraction": tcfg.val_fraction, "seed": 1234,
                    "val": [data.paths[i] for i in val_idx.tolist()]}, indent=1) + "\n")
        except OSError as e:
            raise TrainError(f"cannot write to the run folder {out} ({e}); choose a writable --out") from e

    torch.manual_seed(tcfg.seed)
    model = CVAEGAN(mcfg).to(device)
    trainer = Trainer(model, tcfg, device, rank, world)
    if state is not None:
        trainer.load_state_dict(state)
        del state
    # fixed real images: training ones re-estimate the EMA encoder's BatchNorm; training vs held-out
    # ones measure D's memorisation (acc/D_train_eval vs acc/D_val_eval in metrics.jsonl)
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(4321))
    trainer.calib = images[pick[:512]]
    vpick = val_idx[torch.randperm(len(val_idx), generator=torch.Generator().manual_seed(4321))]
    probe_train, probe_val = images[pick[:128]], data.images[vpick[:128]]
    grid_c = grid_classes(mcfg.num_classes, tcfg.sample_classes)
    grid_s = list(range(tcfg.sample_seeds))
    per_rank = tcfg.batch_size // world
    bar = tqdm(total=tcfg.steps, initial=trainer.step, desc="train", disable=not progress or rank != 0,
               dynamic_ncols=True)
    if rank == 0 and resume:
        _truncate_metrics(out / "metrics.jsonl", trainer.step)
    # a fresh run starts a fresh log (rows left by an attempt killed before its first checkpoint go)
    metrics = open(out / "metrics.jsonl", "a" if resume else "w", encoding="utf-8") if rank == 0 else None
    t_last, steps_since = time.perf_counter(), 0
    try:
        while trainer.step < tcfg.steps:
            step = trainer.step
            gen = step_generator(tcfg.seed, step)
            idx = batch_indices(n, tcfg.batch_size, tcfg.seed, step)
            flips = torch.rand(len(idx), generator=gen) < 0.5
            eps = torch.randn(len(idx), mcfg.z_dim, generator=gen)
            z_p = torch.randn(len(idx), mcfg.z_dim, generator=gen)
            c_p = torch.randint(0, mcfg.num_classes, (len(idx),), generator=gen)
            mine = slice(rank * per_rank, (rank + 1) * per_rank)  # this process's share of the global batch
            x = images[idx[mine]]
            x = torch.where(flips[mine].view(-1, 1, 1, 1), x.flip(-1), x)
            x = uint8_to_float(x).to(device, non_blocking=True)
            if trainer.cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            noise = {"eps": eps[mine].to(device), "z_p": z_p[mine].to(device), "c_p": c_p[mine].to(device)}
            log = trainer.train_step(x, labels[idx[mine]].to(device), gen, noise)
            steps_since += 1
            s = trainer.step
            if on_step is not None:
                on_step(s, log)
            if rank == 0:
                bar.update(1)
                bar.set_postfix({short: f"{log[k]:.3g}" for k, short in POSTFIX.items() if k in log})
                if s % tcfg.log_every == 0 or s == tcfg.steps:
                    now = time.perf_counter()
                    if len(probe_val) and tcfg.variant == "cvae-gan":
                        log["acc/D_train_eval"] = trainer.d_accuracy(probe_train)
                        log["acc/D_val_eval"] = trainer.d_accuracy(probe_val)
                    rec = {"step": s, **{k: round(v, 6) for k, v in log.items()},
                           "lr": tcfg.lr * lr_factor(tcfg, s - 1), "time/step_s": (now - t_last) / steps_since}
                    metrics.write(json.dumps(rec) + "\n")
                    metrics.flush()
                    t_last, steps_since = now, 0
                if tcfg.sample_every and (s % tcfg.sample_every == 0 or s == tcfg.steps):
                    g = trainer.export_generator()  # grids need G only (no EMA-E re-estimation)
                    save_png(sample_grid(g, mcfg, grid_c, grid_s, device), out / "samples" / f"step_{s:07d}.png")
            if s % tcfg.checkpoint_every == 0 or s == tcfg.steps:
                if world > 1:  # every process must hold identical running means before saving
                    for buf in trainer.means.buffers():
                        if buf.is_floating_point():
                            dist.all_reduce(buf)
                            buf /= world
                if rank == 0:
                    atomic_torch_save(trainer.state_dict(), ckpt_path)
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
    export = out / "export"
    if rank == 0:
        save_pretrained(trainer.export_model(), export, fp16=tcfg.export_fp16,
                        include_discriminator=tcfg.export_discriminator)
    if world > 1:
        dist.barrier()
    return export


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop rows logged after the checkpoint a resumed run restarts from (they will be logged again)."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    keep = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
    if len(keep) != len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
        os.replace(tmp, path)


def export_checkpoint(run: str | os.PathLike, out: str | os.PathLike, fp16: bool = True,
                      include_discriminator: bool = False, use_ema: bool = True) -> Path:
    """Write a weights folder from RUN/checkpoint.pt (the EMA generator when the run has one and use_ema)."""
    path = Path(run) / CHECKPOINT
    if not path.is_file():
        raise TrainError(f"{path} not found; is {run} a run folder written by `cvaegan train`?")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = CVAEGAN(ModelConfig.from_dict(state["model_config"]))
    for key, net in (("C", model.classifier), ("D", model.discriminator), ("G", model.generator), ("E", model.encoder)):
        net.load_state_dict(state["nets"][key])
    if use_ema and state.get("ema") is not None:
        model.generator.load_state_dict(state["ema"])
        model.generator = recalibrate_batchnorm(model.generator, model.config, torch.device("cpu"))
        if state.get("ema_E") is not None:  # older checkpoints kept no EMA of E: the live E is exported
            model.encoder.load_state_dict(state["ema_E"])
    return save_pretrained(model.eval(), out, fp16=fp16, include_discriminator=include_discriminator)
