"""The training loop (paper's Algorithm 1): per iteration C -> D -> G -> E, each loss updating only its network.

Run folder layout: train_config.json, model_config.json, metrics.jsonl, samples/step_XXXXXXX.png,
checkpoint.pt (resume state, torch.load(weights_only=True)), split.json, export/ (published weights).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from . import losses as L
from .augment import diff_augment, parse_policy
from .config import ModelConfig, TrainConfig, recipe_changes, recipe_options
from .data import SPLIT_SEED, LabelledImages, split_indices
from .errors import CVAEGANError
from .hub import save_pretrained
from .images import make_grid, save_png, uint8_to_float
from .models import CVAEGAN
from .seeds import step_generator, z_from_seeds
from .speed import gpu_name, machine_record, use_channels_last

CHECKPOINT = "checkpoint.pt"
SNAPSHOTS = "snapshots"  # RUN/snapshots/minute_<M>.pt: the checkpoint as it was at M CPU-minutes
WARM_START = "warm_start.json"  # a warm-started run's source weights and the training they had had (for the card)
AUTO_CLIP_WARMUP = 50  # --grad-clip-auto: updates per network and phase measured before any clipping
AUTO_CLIP_DECAY = 0.99  # --grad-clip-auto: EMA decay of the running mean gradient norm (about 100 updates)
# options a resumed run takes from its caller (the rest are the checkpoint's): they extend or move the run, give it
# more snapshot marks, guard it with a gradient clip, end it with a cool-down of the step size, or change what it
# writes, but not the method. The CLI passes the checkpoint's values for the ones the user did not give
# (cli.resume_config).
RESUME_OPTIONS = (
    "steps",
    "device",
    "budget_minutes",
    "snapshot_minutes",
    "grad_clip",
    "grad_clip_auto",
    "cooldown_steps",
    "log_every",
    "sample_every",
    "checkpoint_every",
)
POSTFIX = {
    "loss/C": "C",
    "loss/D": "D",
    "loss/G_recon": "recon",
    "loss/KL": "KL",
    "acc/C": "accC",
    "psnr/recon": "psnr",
}


class TrainError(CVAEGANError, RuntimeError):
    """Training cannot start or continue as asked; the message says how to fix it."""


def set_requires_grad(nets: dict[str, nn.Module], trainable: tuple[str, ...] | str | None) -> None:
    """Let only the networks named in `trainable` (keys of nets) receive gradients; freeze all others."""
    names = (trainable,) if isinstance(trainable, str) else tuple(trainable or ())
    for name, net in nets.items():
        for p in net.parameters():
            p.requires_grad_(name in names)


def batch_indices(n: int, batch: int, seed: int, step: int) -> torch.Tensor:
    """Indices of the images of global batch `step`: a fresh seeded permutation each epoch (drop last)."""
    per_epoch = max(1, n // batch)
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
    return perm[k * batch : (k + 1) * batch]


def stratified_indices(by_class: list[torch.Tensor], batch: int, classes: int, seed: int, step: int) -> torch.Tensor:
    """Indices of batch `step` drawn as `classes` distinct classes x (batch / classes) images each, grouped by
    class; classes are drawn uniformly, images within a class without replacement when it has enough.
    by_class: per class, the indices of its images (classes with none are never drawn)."""
    g = torch.Generator().manual_seed(seed * 7919 + 104729 * (step + 1))
    usable = torch.tensor([i for i, ids in enumerate(by_class) if len(ids)])
    if len(usable) < classes:
        raise TrainError(
            f"--stratify {classes} needs at least {classes} classes with images, the data has {len(usable)}"
        )
    per = batch // classes
    picked = usable[torch.randperm(len(usable), generator=g)[:classes]]
    out = []
    for c in picked.tolist():
        ids = by_class[c]
        take = (
            torch.randperm(len(ids), generator=g)[:per]
            if len(ids) >= per
            else torch.randint(0, len(ids), (per,), generator=g)
        )
        out.append(ids[take])
    return torch.cat(out)


def warm_start_config(config: dict) -> ModelConfig:
    """The model config of a run warm-started from weights with config.json `config`: the same networks, without
    what was measured on or fitted to the released networks (directions, the class guesser, the inpainting's
    detail feather, the file digests); the release of the new run measures them again."""
    return ModelConfig.from_dict(
        {**config, "directions": [], "direction_units": [], "guesser": {}, "inpaint_feather": 0.0, "files": {}}
    )


def drop_classes(
    data: LabelledImages, folders: list[str], train_idx: torch.Tensor, val_idx: torch.Tensor
) -> tuple[LabelledImages, torch.Tensor, torch.Tensor]:
    """`data` without the classes in `folders` (labels renumbered), and the split's indices mapped onto it."""
    unknown = sorted(set(folders) - set(data.class_folders))
    if unknown:
        raise TrainError(f"--exclude-classes: unknown class folders {unknown[:5]}; use names from the data's folders")
    keep = [i for i, f in enumerate(data.class_folders) if f not in folders]
    if len(keep) < 2:
        raise TrainError("--exclude-classes leaves fewer than 2 classes to train on")
    new_label = torch.full((data.num_classes,), -1, dtype=torch.long)
    new_label[keep] = torch.arange(len(keep))
    kept = torch.nonzero(new_label[data.labels] >= 0).flatten()
    position = torch.full((len(data.labels),), -1, dtype=torch.long)
    position[kept] = torch.arange(len(kept))
    sub = data.subset(kept)
    sub = LabelledImages(
        sub.images,
        new_label[sub.labels],
        [data.class_folders[i] for i in keep],
        [data.class_names[i] for i in keep],
        sub.paths,
        sub.attributes,
        sub.skipped,
    )
    remap = lambda idx: position[idx][position[idx] >= 0]  # noqa: E731
    return sub, remap(train_idx), remap(val_idx)


def effective_stratify(stratify: int, batch: int, classes: int) -> int:
    """Classes per stratified batch: `stratify`, or on data with fewer classes the largest divisor of the
    batch size that the data can fill (0 = off stays off)."""
    if not stratify or stratify <= classes:
        return stratify
    return max(k for k in range(1, classes + 1) if batch % k == 0)


def lr_factor(tcfg: TrainConfig, step: int) -> float:
    """Multiplier of the base learning rate at `step` (0-based): warm-up, then constant or cosine to 10%, then
    the cool-down's linear fall over the last --cooldown-steps (1/N at the last step)."""
    f = 1.0
    if tcfg.warmup_steps and step < tcfg.warmup_steps:
        f = (step + 1) / tcfg.warmup_steps
    if tcfg.lr_schedule == "cosine":
        f *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step, tcfg.steps) / tcfg.steps))
    if tcfg.cooldown_steps:
        f *= min(1.0, max(tcfg.steps - step, 1) / tcfg.cooldown_steps)
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
        raise TrainError(
            f"could not write {path} ({e}); the previous checkpoint is intact. "
            "Free disk space or make the run folder writable, then --resume"
        ) from e


class Trainer:
    """Holds the networks, optimisers, running feature means, the step counter and the training clock of one run."""

    def __init__(self, model: CVAEGAN, tcfg: TrainConfig, device: torch.device, rank: int = 0, world: int = 1):
        self.model, self.tcfg, self.device = model, tcfg, device
        self.rank, self.world = rank, world
        self.cfg = model.config
        self.policy = parse_policy(tcfg.diffaugment)
        self.nets: dict[str, nn.Module] = {
            "C": model.classifier,
            "D": model.discriminator,
            "G": model.generator,
            "E": model.encoder,
        }
        self.cuda = device.type == "cuda"
        self.channels_last = use_channels_last(tcfg.memory_format, device)
        if self.channels_last:
            for net in self.nets.values():
                net.to(memory_format=torch.channels_last)
        # Data-parallel wrappers, used only in the phase that trains each network (others call the plain one).
        self.train_nets = {k: (DDP(v) if world > 1 else v) for k, v in self.nets.items()}
        # GAN ablations: D is made class-conditional by a projection embedding "P", trained with D
        self.proj = (
            nn.Embedding(model.config.num_classes, model.config.feature_dim).to(device)
            if tcfg.variant in ("cgan", "fm-cgan")
            else None
        )
        self.grad_nets = dict(self.nets)  # every module whose gradients a phase switches on or off
        if self.proj is not None:
            nn.init.normal_(self.proj.weight, std=0.02)
            self.grad_nets["P"] = self.proj
        self.opt = {
            k: torch.optim.Adam(
                list(v.parameters()) + (list(self.proj.parameters()) if k == "D" and self.proj is not None else []),
                lr=tcfg.lr,
                betas=tcfg.betas,
            )
            for k, v in self.nets.items()
        }
        f, k = self.cfg.feature_dim, self.cfg.num_classes
        self.means = nn.ModuleDict(
            {
                "d_real": L.RunningMeans(1, f, tcfg.momentum),
                "d_fake": L.RunningMeans(1, f, tcfg.momentum),
                "c_real": L.RunningMeans(k, f, tcfg.momentum),
                "c_fake": L.RunningMeans(k, f, tcfg.momentum),
            }
        ).to(device)
        # running E[f^2] of the same features, for std_matching; kept in the checkpoint, not in exported weights
        # (a warm start estimates them afresh: with momentum 0.9, within a few dozen steps)
        self.moments = nn.ModuleDict(
            {key: L.RunningMeans(m.mean.shape[0], f, tcfg.momentum) for key, m in self.means.items()}
        ).to(device)
        self.lecam = L.LeCamAnchors(tcfg.lecam_decay).to(device)  # used when lecam_weight > 0
        ctx = L.LossContext(
            nets={**self.grad_nets},
            train_nets={**self.train_nets, "P": self.proj},
            means=self.means,
            tcfg=tcfg,
            num_classes=k,
            augment=self._aug,
            augments=bool(self.policy),
            autocast=self.autocast,
            lecam=self.lecam,
            moments=self.moments,
        )
        self.loss = L.method_loss(ctx)
        self.warmup_loss = L.CVAELoss(ctx, with_classifier=True)  # the first `pretrain_steps` steps
        # EMA copies of G and E: exported together, so that E still inverts the G it ships with.
        self.ema = copy.deepcopy(model.generator).eval().requires_grad_(False) if tcfg.ema_decay else None
        self.ema_e = copy.deepcopy(model.encoder).eval().requires_grad_(False) if tcfg.ema_decay else None
        self.calib: torch.Tensor | None = None  # (N, 3, R, R) uint8 real images to re-estimate EMA E's BatchNorm
        self.step = 0
        # training clock: CPU seconds of this process spent in training steps (all threads), wall seconds,
        # images seen; kept in the checkpoint so that a resumed run continues counting. train() adds
        # "machines": one speed.machine_record per training process (the machine's speed reference)
        self.clock = {"cpu_s": 0.0, "wall_s": 0.0, "images": 0, "threads": torch.get_num_threads()}
        # gradient norms: measured on the steps train() logs (cheap there), and on every step when clipping;
        # logged as grad/<net> (the largest over the step's phases, before clipping) to spot blow-ups
        self.measure_grad_norms = False
        self.grad_norms: dict[str, float] = {}
        # --grad-clip-auto: per network and phase, a running mean of the (clipped) gradient norm, how many
        # updates it has seen, and how many updates were clipped; kept in the checkpoint
        self.norm_stats: dict[str, dict[str, float]] = {}

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else nullcontext()

    def cpu_minutes(self) -> float:
        """Training time in CPU-minutes per thread: process CPU time / threads (other load does not count)."""
        return self.clock["cpu_s"] / 60 / max(1, self.clock["threads"])

    def _update(self, trains: tuple[str, ...], loss: torch.Tensor) -> None:
        for net in self.grad_nets.values():  # stale gradients of other phases never reach a step
            net.zero_grad(set_to_none=True)
        loss.backward()
        for name in trains:
            if name not in self.opt:  # "P" steps with D's optimiser
                continue
            if self.tcfg.grad_clip:
                norm = nn.utils.clip_grad_norm_(self.nets[name].parameters(), self.tcfg.grad_clip)
            elif self.tcfg.grad_clip_auto:
                norm = self._auto_clip(f"{name}@{'+'.join(trains)}", self.nets[name])
            elif self.measure_grad_norms:
                norm = nn.utils.get_total_norm([p.grad for p in self.nets[name].parameters() if p.grad is not None])
            else:
                norm = None
            if norm is not None and self.measure_grad_norms:
                self.grad_norms[name] = max(self.grad_norms.get(name, 0.0), float(norm))
            self.opt[name].step()

    def _auto_clip(self, key: str, net: nn.Module) -> torch.Tensor:
        """--grad-clip-auto K: scale `net`'s gradient down to K x the running mean of its norm in this phase
        (after AUTO_CLIP_WARMUP updates of measuring only). Returns the norm before clipping."""
        params = [p for p in net.parameters() if p.grad is not None]
        norm = nn.utils.get_total_norm([p.grad for p in params])
        st = self.norm_stats.setdefault(key, {"mean": 0.0, "updates": 0, "clipped": 0})
        value = float(norm)
        if not math.isfinite(value):  # nothing sensible to scale to: skip this network's update entirely
            for p in params:  # (no gradient at all, so Adam does not step on its momentum either)
                p.grad = None
            st["clipped"] += 1
            return norm
        if st["updates"] >= AUTO_CLIP_WARMUP:
            limit = self.tcfg.grad_clip_auto * st["mean"]
            if value > limit:
                nn.utils.clip_grads_with_norm_(params, limit, norm)
                st["clipped"] += 1
                value = limit
        n = st["updates"] = st["updates"] + 1
        rate = max(1.0 / n, 1.0 - AUTO_CLIP_DECAY)  # a plain mean at first, then an EMA
        st["mean"] += rate * (value - st["mean"])
        return norm

    def clipped_updates(self) -> dict[str, int]:
        """--grad-clip-auto: updates clipped so far, per network (all phases)."""
        out: dict[str, int] = {}
        for key, st in self.norm_stats.items():
            net = key.split("@")[0]
            out[net] = out.get(net, 0) + int(st["clipped"])
        return out

    def _aug(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return diff_augment(x, self.policy, gen) if self.policy else x

    def train_step(
        self, x_r: torch.Tensor, c_r: torch.Tensor, gen: torch.Generator, noise: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        """One iteration. x_r: (B, 3, R, R) in [-1, 1]; c_r: (B,) labels; noise: eps, z_p, c_p for this rank.

        Walks the method's phases (cvaegan.losses); in each, only the networks it trains receive gradients.
        """
        t = self.tcfg
        for name, opt in self.opt.items():
            for group in opt.param_groups:
                group["lr"] = t.lr * lr_factor(t, self.step) * (t.d_lr_mult if name == "D" else 1.0)
        for net in self.nets.values():
            net.train()
        batch = L.Batch(x_r, c_r, noise["eps"], noise["z_p"], noise["c_p"], gen, self.step)
        loss_obj = self.warmup_loss if self.step < t.pretrain_steps else self.loss
        log: dict[str, float] = {}
        self.grad_norms = {}
        for phase in loss_obj.phases_at(self.step):
            set_requires_grad(self.grad_nets, phase.trains)
            loss, scalars = loss_obj.compute(phase, batch)
            self._update(phase.trains, loss)
            log.update(scalars)
            if "G" in phase.trains and self.ema is not None:
                self._update_ema()
        set_requires_grad(self.grad_nets, ())
        self.step += 1
        log.update({f"grad/{name}": v for name, v in self.grad_norms.items()})
        return log

    @torch.no_grad()
    def _update_ema(self) -> None:
        d = self.tcfg.ema_decay
        if self.tcfg.ema_rampup:
            d = min(d, (1 + self.step) / (10 + self.step))
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
            "moments": self.moments.state_dict(),
            "lecam": self.lecam.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "ema_E": self.ema_encoder().state_dict() if self.ema_e is not None else None,
            "proj": self.proj.state_dict() if self.proj is not None else None,
            "model_config": self.cfg.to_dict(),
            "train_config": self.tcfg.to_dict(),
            "torch_rng": torch.get_rng_state(),
            "clock": dict(self.clock),
            "norm_stats": {k: dict(v) for k, v in self.norm_stats.items()},
        }

    def load_networks(self, warm: dict) -> None:
        """Warm start from hub.load_training_state(...): all four networks and the running feature means,
        strictly; optimisers, step and clock start fresh. The EMAs start from the loaded G and E."""
        from .serialization import load_state_strict

        src = warm.get("source", "the weights folder")
        for k, net in self.nets.items():
            load_state_strict(net, warm["nets"][k], f"{src} ({k})")
        load_state_strict(self.means, warm["means"], f"{src} (running means)")
        if self.ema is not None:
            self.ema.load_state_dict(self.nets["G"].state_dict())
            self.ema_e.load_state_dict(self.nets["E"].state_dict())

    def load_state_dict(self, state: dict) -> None:
        for k, net in self.nets.items():
            net.load_state_dict(state["nets"][k])
        for k, opt in self.opt.items():
            opt.load_state_dict(state["opt"][k])
        self.means.load_state_dict(state["means"])
        if state.get("moments") is not None:  # checkpoints from before std_matching start the moments afresh
            self.moments.load_state_dict(state["moments"])
        if state.get("lecam") is not None:  # checkpoints from before the LeCam option have no anchors
            self.lecam.load_state_dict(state["lecam"])
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
        # checkpoints from before the clock existed count from zero; the thread count is today's
        self.clock.update({k: v for k, v in (state.get("clock") or {}).items() if k != "threads"})
        self.norm_stats = {k: dict(v) for k, v in (state.get("norm_stats") or {}).items()}


@torch.no_grad()
def recalibrate_batchnorm(
    generator: nn.Module, cfg: ModelConfig, device: torch.device, batches: int = 16, batch_size: int = 64, seed: int = 0
) -> nn.Module:
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
def recalibrate_encoder(
    encoder: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 64
) -> nn.Module:
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
        e.trunk(uint8_to_float(images[i : i + batch_size]).to(device))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    return e.eval()


def grid_classes(num_classes: int, rows: int) -> list[int]:
    """`rows` class indices spread evenly over 0..K-1 (all classes when K <= rows)."""
    if num_classes <= rows:
        return list(range(num_classes))
    return [round(i * (num_classes - 1) / (rows - 1)) for i in range(rows)] if rows > 1 else [0]


@torch.no_grad()
def sample_grid(
    generator: nn.Module, cfg: ModelConfig, classes: list[int], seeds: list[int], device: torch.device
) -> Image.Image:  # noqa: F821
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


def warm_start_recipe_note(init_from, recorded: dict | None, tcfg: TrainConfig) -> str:
    """What `train --init-from` says about its recipe against the one the weights were trained with: a warm start
    that changes C's loss (label smoothing) or the other losses' terms restarts part of the climb (README, the
    birds warm starts: 13 points of the judge's top-1 lost at 15 CPU-minutes, most of it from C's smoothing)."""
    if recorded is None:
        return (
            f"note: --init-from {init_from}: the weights do not record the recipe they were trained with (released "
            "before figures.json kept it); see their model card, and keep its options: a warm start that changes "
            "the losses loses ground first"
        )
    changes = recipe_changes(recorded, recipe_options(tcfg.to_dict()))
    if not changes:
        return f"note: --init-from {init_from}: the same recipe as the weights' training"
    return (
        f"note: --init-from {init_from}: the recipe differs from the weights' training ({'; '.join(changes)}); "
        "a warm start that changes the losses loses ground first (README: the birds warm starts)"
    )


def train(
    data: LabelledImages,
    out: str | os.PathLike,
    tcfg: TrainConfig,
    mcfg: ModelConfig | None = None,
    resume: bool = False,
    progress: bool = True,
    on_step=None,
    init_from: str | os.PathLike | None = None,
    init_g_cond: str | None = None,
) -> Path:
    """Train on decoded images and write everything into the run folder `out`; returns the export folder.

    mcfg None builds the default config for 64 px from the data's classes. With resume=True the run
    continues from out/checkpoint.pt (its configs win over the arguments, except RESUME_OPTIONS). init_from: a weights folder
    carrying discriminator.safetensors and the running feature means (`export_discriminator`): all four
    networks start from it, with fresh optimisers; its architecture wins over `mcfg`, except that init_g_cond="cbn"
    converts a concat G exactly (models.generator_state_to_cbn). `on_step(step, log)` is called after every iteration.
    """
    out = Path(out)
    rank, world, device = _init_distributed(tcfg)
    ckpt_path = out / CHECKPOINT

    # --- configs: resume > warm start > arguments ----------------------------------------------------
    state = None
    if resume:
        if not ckpt_path.is_file():
            raise TrainError(f"--resume: no {ckpt_path}; start a new run without --resume")
        if init_from is not None:
            raise TrainError("--resume and --init-from exclude each other: a resumed run continues its own checkpoint")
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        mcfg = ModelConfig.from_dict(state["model_config"])
        old = TrainConfig.from_dict(state["train_config"])
        # a resumed run may be extended (steps, budget), moved (device), given more snapshot marks, a gradient
        # clip, or other logging intervals; everything else is the checkpoint's
        tcfg = dataclasses.replace(old, **{k: getattr(tcfg, k) for k in RESUME_OPTIONS})
    elif ckpt_path.exists():
        raise TrainError(
            f"{out} already holds a run ({CHECKPOINT}); pass --resume to continue it or choose another --out"
        )
    warm = None
    if init_from is not None:
        from .hub import load_training_state

        warm = load_training_state(init_from)
        mcfg = warm_start_config(warm["config"])
        if init_g_cond == "cbn" and mcfg.g_cond == "concat":  # an exact conversion: G computes what it did
            from .models import generator_state_to_cbn

            warm["nets"]["G"] = generator_state_to_cbn(warm["nets"]["G"], mcfg)
            mcfg = dataclasses.replace(mcfg, g_cond="cbn")
        held = warm.get("val_fraction", 0.0)
        if held and tcfg.val_fraction == 0:  # the released figures' held-out photos stay out of training
            tcfg = dataclasses.replace(tcfg, val_fraction=held)
            if rank == 0:
                print(f"note: --init-from: holding out {held:g} of each class, as the weights' training did")
        elif held and tcfg.val_fraction != held:
            raise TrainError(
                f"--init-from {init_from}: those weights were trained holding out {held:g} of each class and are "
                f"measured on those photos; --val-fraction {tcfg.val_fraction:g} would train on some of them. "
                f"Use --val-fraction {held:g} (or leave it out)"
            )
        if rank == 0:
            print(warm_start_recipe_note(init_from, warm.get("training"), tcfg))
    # the split is drawn on all classes, so that held-out photos stay held out whatever is excluded
    train_idx, val_idx = split_indices(data.labels, tcfg.val_fraction, seed=SPLIT_SEED)
    excluded = [f.strip() for f in tcfg.exclude_classes.split(",") if f.strip()]
    if excluded:
        full_classes = data.num_classes
        data, train_idx, val_idx = drop_classes(data, excluded, train_idx, val_idx)
        if mcfg is not None and mcfg.num_classes == full_classes:
            mcfg = ModelConfig.from_dict(
                {
                    **mcfg.to_dict(),
                    "num_classes": data.num_classes,
                    "class_names": data.class_names,
                    "class_folders": data.class_folders,
                }
            )
    if mcfg is None:
        mcfg = ModelConfig.for_resolution(64, data.num_classes)
    if warm is not None and list(mcfg.class_folders) != list(data.class_folders):
        lacking = [f for f in data.class_folders if f not in mcfg.class_folders]
        hint = "warm-start from weights trained on the same classes"
        if lacking and set(mcfg.class_folders) <= set(data.class_folders):  # classes left out of their training
            hint = (
                f"the weights lack {len(lacking)} of the data's class folders (left out of their training, as the "
                f"bundled faces and birds leave some out for enrolment): add --exclude-classes {','.join(lacking)}"
            )
        raise TrainError(f"--init-from {init_from}: its classes are not the data's class folders; {hint}")
    if mcfg.num_classes != data.num_classes:
        raise TrainError(f"the model has {mcfg.num_classes} classes but the data has {data.num_classes}")
    mcfg.class_names, mcfg.class_folders = list(data.class_names), list(data.class_folders)
    if data.images.shape[-1] != mcfg.resolution:
        raise TrainError(f"images are {data.images.shape[-1]} px but the model is {mcfg.resolution} px")

    # --- data: the training split, per-class index lists for stratified batches -----------------------
    images, labels = data.images[train_idx], data.labels[train_idx]
    n = len(labels)
    if n < tcfg.batch_size:
        raise TrainError(f"only {n} training images but batch size {tcfg.batch_size}; lower --batch-size")
    if tcfg.batch_size % world:
        raise TrainError(f"batch size {tcfg.batch_size} must be divisible by the number of processes {world}")
    by_class = [torch.nonzero(labels == c).flatten() for c in range(mcfg.num_classes)]
    stratify = effective_stratify(tcfg.stratify, tcfg.batch_size, sum(len(ids) > 0 for ids in by_class))
    if stratify != tcfg.stratify and rank == 0:
        tqdm.write(
            f"note: --stratify {tcfg.stratify} lowered to {stratify} classes per batch (the data has "
            f"{sum(len(ids) > 0 for ids in by_class)} classes with training images; batch {tcfg.batch_size})"
        )
    if rank == 0:
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / "samples").mkdir(exist_ok=True)
            # the config the run trains with now (a resume may have changed RESUME_OPTIONS)
            (out / "train_config.json").write_text(json.dumps(tcfg.to_dict(), indent=2) + "\n")
            if state is None:
                (out / "model_config.json").write_text(mcfg.to_json())
                (out / "split.json").write_text(
                    json.dumps(
                        {
                            "val_fraction": tcfg.val_fraction,
                            "seed": SPLIT_SEED,
                            "val": [data.paths[i] for i in val_idx.tolist()],
                        },
                        indent=1,
                    )
                    + "\n"
                )
                if warm is not None:
                    (out / WARM_START).write_text(
                        json.dumps({"init_from": warm["source"], "trained_before": warm["trained_before"]}, indent=1)
                        + "\n"
                    )
        except OSError as e:
            raise TrainError(f"cannot write to the run folder {out} ({e}); choose a writable --out") from e

    # --- networks: fresh, resumed or warm-started ------------------------------------------------------
    torch.manual_seed(tcfg.seed)
    model = CVAEGAN(mcfg).to(device)
    trainer = Trainer(model, tcfg, device, rank, world)
    if state is not None:
        trainer.load_state_dict(state)
        del state
    elif warm is not None:
        trainer.load_networks(warm)
    if rank == 0:  # what a CPU-minute was worth on this process's machine (kept with the clock)
        trainer.clock["machines"] = [*trainer.clock.get("machines", []), machine_record(trainer.step, gpu_name(device))]
    # fixed real images: training ones re-estimate the EMA encoder's BatchNorm; training vs held-out
    # ones measure D's memorisation (acc/D_train_eval vs acc/D_val_eval in metrics.jsonl)
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(4321))
    trainer.calib = images[pick[:512]]
    vpick = val_idx[torch.randperm(len(val_idx), generator=torch.Generator().manual_seed(4321))]
    probe_train, probe_val = images[pick[:128]], data.images[vpick[:128]]
    grid_c = grid_classes(mcfg.num_classes, tcfg.sample_classes)
    grid_s = list(range(tcfg.sample_seeds))
    per_rank = tcfg.batch_size // world
    marks = [m for m in tcfg.snapshot_marks() if m > trainer.cpu_minutes()]

    def write_grid(step: int) -> None:
        g = trainer.export_generator()  # grids need G only (no EMA-E re-estimation)
        save_png(sample_grid(g, mcfg, grid_c, grid_s, device), out / "samples" / f"step_{step:07d}.png")

    # --- the loop --------------------------------------------------------------------------------------
    # a CPU budget far below --steps ends the run: the bar then counts steps without a total
    budgeted = tcfg.budget_minutes is not None
    bar = tqdm(
        total=None if budgeted else tcfg.steps,
        initial=trainer.step,
        desc="train",
        disable=not progress or rank != 0,
        dynamic_ncols=True,
    )
    if rank == 0 and resume:
        _truncate_metrics(out / "metrics.jsonl", trainer.step)
    # a fresh run starts a fresh log (rows left by an attempt killed before its first checkpoint go)
    metrics = open(out / "metrics.jsonl", "a" if resume else "w", encoding="utf-8") if rank == 0 else None
    t_last, steps_since = time.perf_counter(), 0
    stop = False
    with _stop_on_signal(world == 1) as asked, _closing(bar, metrics):
        while trainer.step < tcfg.steps and not stop:
            step = trainer.step
            cpu0, wall0 = time.process_time(), time.perf_counter()
            gen = step_generator(tcfg.seed, step)
            if stratify:
                idx = stratified_indices(by_class, tcfg.batch_size, stratify, tcfg.seed, step)
            else:
                idx = batch_indices(n, tcfg.batch_size, tcfg.seed, step)
            flips = torch.rand(len(idx), generator=gen) < 0.5
            eps = torch.randn(len(idx), mcfg.z_dim, generator=gen)
            z_p = torch.randn(len(idx), mcfg.z_dim, generator=gen)
            c_p = torch.randint(0, mcfg.num_classes, (len(idx),), generator=gen)
            if stratify:  # prior samples of exactly the batch's classes, as many of each
                c_p = labels[idx]
            mine = slice(rank * per_rank, (rank + 1) * per_rank)  # this process's share of the global batch
            x = images[idx[mine]]
            x = torch.where(flips[mine].view(-1, 1, 1, 1), x.flip(-1), x)
            x = uint8_to_float(x).to(device, non_blocking=True)
            if trainer.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            noise = {"eps": eps[mine].to(device), "z_p": z_p[mine].to(device), "c_p": c_p[mine].to(device)}
            trainer.measure_grad_norms = (trainer.step + 1) % tcfg.log_every == 0  # the steps logged below
            log = trainer.train_step(x, labels[idx[mine]].to(device), gen, noise)
            trainer.clock["cpu_s"] += time.process_time() - cpu0
            trainer.clock["wall_s"] += time.perf_counter() - wall0
            trainer.clock["images"] += tcfg.batch_size
            steps_since += 1
            s = trainer.step
            minutes = trainer.cpu_minutes()
            stop = (tcfg.budget_minutes is not None and minutes >= tcfg.budget_minutes) or asked["signal"] is not None
            if world > 1 and tcfg.budget_minutes is not None:  # every process stops at the same step
                flag = torch.tensor([float(stop)], device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stop = bool(flag.item())
            if on_step is not None:
                on_step(s, log)
            last = stop or s == tcfg.steps
            if rank == 0:
                bar.update(1)
                post = {short: f"{log[k]:.3g}" for k, short in POSTFIX.items() if k in log}
                if budgeted:
                    post["cpu_min"] = f"{minutes:.1f}/{tcfg.budget_minutes:g}"
                bar.set_postfix(post)
                if s % tcfg.log_every == 0 or last:
                    now = time.perf_counter()
                    if len(probe_val) and tcfg.variant == "cvae-gan":
                        log["acc/D_train_eval"] = trainer.d_accuracy(probe_train)
                        log["acc/D_val_eval"] = trainer.d_accuracy(probe_val)
                    rec = {
                        "step": s,
                        **{k: round(v, 6) for k, v in log.items()},
                        "lr": tcfg.lr * lr_factor(tcfg, s - 1),
                        "time/step_s": (now - t_last) / steps_since,
                        "clock/cpu_min": round(minutes, 3),
                        "clock/wall_min": round(trainer.clock["wall_s"] / 60, 3),
                        "clock/images": trainer.clock["images"],
                        **{f"clip/{k}": n for k, n in trainer.clipped_updates().items()},
                    }
                    metrics.write(json.dumps(rec) + "\n")
                    metrics.flush()
                    t_last, steps_since = now, 0
                if (tcfg.sample_every and s % tcfg.sample_every == 0) or last:
                    write_grid(s)
            crossed = [m for m in marks if minutes >= m]
            if s % tcfg.checkpoint_every == 0 or last or crossed:
                if world > 1:  # every process must hold identical running means before saving
                    for buf in [*trainer.means.buffers(), *trainer.moments.buffers(), *trainer.lecam.buffers()]:
                        if buf.is_floating_point():
                            dist.all_reduce(buf)
                            buf /= world
                if rank == 0:
                    ckpt = trainer.state_dict()
                    atomic_torch_save(ckpt, ckpt_path)
                    for m in crossed:  # a copy per CPU-minute mark, for equal-budget comparisons
                        (out / SNAPSHOTS).mkdir(exist_ok=True)
                        atomic_torch_save(ckpt, out / SNAPSHOTS / snapshot_name(m))
                marks = [m for m in marks if m not in crossed]
    if asked["signal"] is not None:
        print(
            f"stopped by {signal.Signals(asked['signal']).name} at step {trainer.step} "
            f"({trainer.cpu_minutes():.1f} CPU-minutes); checkpoint saved in {ckpt_path}: continue with "
            "the same command and --resume",
            flush=True,
        )
    elif budgeted and not stop and rank == 0:  # --steps, not the budget, ended the run: easy to miss in a long log
        print(
            f"note: the run stopped at --steps {tcfg.steps} after {trainer.cpu_minutes():.1f} of its "
            f"{tcfg.budget_minutes:g} CPU-minutes; to use the rest, --resume with a larger --steps "
            f"(e.g. --steps {2 * tcfg.steps})"
            + (
                f"; its cool-down of {tcfg.cooldown_steps} steps then moves to the new end, so the step size is full "
                "again at once (add --cooldown-steps 0 to go on without one)"
                if tcfg.cooldown_steps
                else ""
            )
        )

    # --- export ----------------------------------------------------------------------------------------
    export = out / "export"
    if rank == 0:
        if not any((out / "samples").glob("*.png")):  # e.g. a resumed run that had nothing left to do
            write_grid(trainer.step)
        save_pretrained(
            trainer.export_model(),
            export,
            fp16=tcfg.export_fp16,
            include_discriminator=tcfg.export_discriminator,
            running_means=trainer.means if tcfg.export_discriminator else None,
        )
    if world > 1:
        dist.barrier()
    return export


@contextmanager
def _closing(bar, metrics):
    """Close the progress bar and the metrics log however the loop ends."""
    try:
        yield
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()


@contextmanager
def _stop_on_signal(enabled: bool):
    """While training: SIGTERM or SIGINT (Ctrl-C) asks the loop to finish its step, save a checkpoint and export,
    so `--resume` loses nothing; a second signal stops at once. Yields a dict whose "signal" is set when asked.
    Only in the main thread of a single-process run (handlers cannot be set elsewhere, and the processes of a
    distributed run must stop at the same step)."""
    asked: dict = {"signal": None}
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield asked
        return

    def handler(signum, frame):
        if asked["signal"] is not None:  # asked twice: stop now, as without this handler
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        asked["signal"] = signum
        print(
            f"\n{signal.Signals(signum).name}: finishing this step, then saving a checkpoint "
            "(send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    before = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield asked
    finally:
        for sig, h in before.items():
            signal.signal(sig, h)


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


def model_from_checkpoint(path: str | os.PathLike, use_ema: bool = True) -> tuple[CVAEGAN, dict]:
    """(model, checkpoint state) from a checkpoint file: the EMA of G (BatchNorm re-estimated) and of E when
    the run kept them and use_ema, otherwise the live networks."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return model_from_state(state, use_ema), state


def model_from_state(state: dict, use_ema: bool = True) -> CVAEGAN:
    """The model of a loaded checkpoint state (see model_from_checkpoint)."""
    model = CVAEGAN(ModelConfig.from_dict(state["model_config"]))
    for key, net in (("C", model.classifier), ("D", model.discriminator), ("G", model.generator), ("E", model.encoder)):
        net.load_state_dict(state["nets"][key])
    if use_ema and state.get("ema") is not None:
        model.generator.load_state_dict(state["ema"])
        model.generator = recalibrate_batchnorm(model.generator, model.config, torch.device("cpu"))
        if state.get("ema_E") is not None:  # older checkpoints kept no EMA of E: the live E is exported
            model.encoder.load_state_dict(state["ema_E"])
    return model.eval()


def snapshot_name(minute: float) -> str:
    """File name of the snapshot `train --snapshot-minutes` keeps at MINUTE CPU-minutes."""
    return f"minute_{minute:g}.pt"


def kept_snapshots(run: str | os.PathLike) -> list[tuple[str, Path]]:
    """(mark, path) of every snapshot RUN kept (`train --snapshot-minutes`), by CPU-minute mark; a file name that
    is not a number of minutes sorts last."""
    found = [(p.stem.removeprefix("minute_"), p) for p in (Path(run) / SNAPSHOTS).glob("minute_*.pt")]
    return sorted(found, key=lambda mp: (0, float(mp[0])) if mp[0].replace(".", "", 1).isdigit() else (1, 0.0))


def run_checkpoint(run: str | os.PathLike, snapshot: float | None = None) -> Path:
    """RUN/checkpoint.pt, or with SNAPSHOT the copy of it that `train --snapshot-minutes` kept at that many
    CPU-minutes (RUN/snapshots/minute_<SNAPSHOT>.pt). Raises TrainError naming the snapshots that exist."""
    run = Path(run)
    if snapshot is None:
        path = run / CHECKPOINT
        if not path.is_file():
            raise TrainError(f"{path} not found; is {run} a run folder written by `cvaegan train`?")
        return path
    path = run / SNAPSHOTS / snapshot_name(snapshot)
    if not path.is_file():
        kept = [mark for mark, _ in kept_snapshots(run)]
        have = ", ".join(kept) if kept else "none (train with --snapshot-minutes to keep some)"
        raise TrainError(
            f"{run} kept no snapshot at {snapshot:g} CPU-minutes ({path} not found); its snapshots: {have}"
        )
    return path


def export_checkpoint(
    run: str | os.PathLike,
    out: str | os.PathLike,
    fp16: bool = True,
    include_discriminator: bool = True,
    use_ema: bool = True,
    snapshot: float | None = None,
) -> Path:
    """Write a weights folder from RUN/checkpoint.pt, or from the run's snapshot at SNAPSHOT CPU-minutes (the
    EMA generator when the run has one and use_ema). include_discriminator also writes D and the running feature
    means, so `train --init-from` can go on."""
    model, state = model_from_checkpoint(run_checkpoint(run, snapshot), use_ema)
    means = None
    if include_discriminator:
        cfg, k = model.config, model.config.num_classes
        means = nn.ModuleDict(
            {
                name: L.RunningMeans(groups, cfg.feature_dim, 0.0)
                for name, groups in (("d_real", 1), ("d_fake", 1), ("c_real", k), ("c_fake", k))
            }
        )
        means.load_state_dict(state["means"])
    return save_pretrained(
        model.eval(), out, fp16=fp16, include_discriminator=include_discriminator, running_means=means
    )
