"""`python -m cvaegan <command>`: one argparse parser per command, each making one call into the package."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import TrainConfig


def _add_weights(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default=None, metavar="DIR_OR_REPO",
                   help="weights folder or Hub repo id owner/name (default: the bundled weights/)")
    p.add_argument("--revision", default=None, help="Hub branch, tag or commit (with a repo id)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run (default auto)")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cvaegan", description="CVAE-GAN: train, export and sample fine-grained image generators.")
    ap.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = TrainConfig()
    p = sub.add_parser("train", help="train on a labelled image folder or .tar", description=(
        "Train CVAE-GAN on an ImageFolder directory (<class_folder>/<image>) or an uncompressed .tar of one. "
        "Writes metrics.jsonl, sample grids, checkpoint.pt and export/ into --out. "
        "Multi-GPU: torchrun --nproc_per_node=N -m cvaegan train ..."))
    p.add_argument("--data", required=True, help="folder or .tar in ImageFolder layout (metadata.csv beside it gives display names)")
    p.add_argument("--out", required=True, help="run folder (created); holds the checkpoint, samples and export/")
    p.add_argument("--resolution", type=int, default=64, choices=[32, 64, 128], help="image side in pixels (default 64)")
    p.add_argument("--z-dim", type=int, default=256, help="latent size (default 256)")
    p.add_argument("--base-channels", type=int, default=None, help="channels at full resolution (default: per resolution, see README)")
    p.add_argument("--max-channels", type=int, default=256, help="channel cap at low resolutions (default 256)")
    p.add_argument("--steps", type=int, default=d.steps, help=f"iterations to train (default {d.steps}); with --resume, the new total")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"images per iteration, all processes together (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate for all networks (default {d.lr})")
    p.add_argument("--beta1", type=float, default=d.betas[0], help=f"Adam beta1 (default {d.betas[0]})")
    p.add_argument("--beta2", type=float, default=d.betas[1], help=f"Adam beta2 (default {d.betas[1]})")
    for i, help_ in enumerate(["KL", "L_G (reconstruction + pairwise feature matching)",
                               "L_GD (mean feature matching against D)", "L_GC (per-class mean feature matching against C)"], 1):
        p.add_argument(f"--lambda{i}", type=float, default=getattr(d, f"lambda{i}"),
                       help=f"weight of {help_} (default {getattr(d, f'lambda{i}')}, the paper's)")
    p.add_argument("--momentum", type=float, default=d.momentum, help=f"running-mean momentum of the feature means (default {d.momentum}; 0 = batch means)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"training seed (default {d.seed})")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help="fraction of each class held out for validation (default 0)")
    p.add_argument("--diffaugment", default=d.diffaugment, help="DiffAugment policy for D, e.g. color,translation,cutout (default off)")
    p.add_argument("--ema-decay", type=float, default=None, help="EMA of G's weights for export/samples, e.g. 0.999 (default off)")
    p.add_argument("--grad-clip", type=float, default=None, help="clip each network's gradient norm to this (default off)")
    p.add_argument("--lr-schedule", default=d.lr_schedule, choices=["constant", "cosine"], help="learning-rate schedule (default constant)")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up steps (default 0)")
    p.add_argument("--log-every", type=int, default=d.log_every, help=f"metrics.jsonl interval in steps (default {d.log_every})")
    p.add_argument("--sample-every", type=int, default=d.sample_every, help=f"sample grid interval in steps, 0 = off (default {d.sample_every})")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help=f"checkpoint interval in steps (default {d.checkpoint_every})")
    p.add_argument("--no-fp16-export", action="store_true", help="export float32 weights instead of float16")
    p.add_argument("--export-discriminator", action="store_true", help="also export D (to fine-tune later)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint.pt")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train (default auto)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")

    p = sub.add_parser("export", help="export a run's checkpoint as a weights folder", description=(
        "Write config.json + *.safetensors from RUN/checkpoint.pt (e.g. to publish a run that is still training)."))
    p.add_argument("--run", required=True, help="run folder holding checkpoint.pt")
    p.add_argument("--out", required=True, help="weights folder to write")
    p.add_argument("--no-fp16", action="store_true", help="store float32 weights")
    p.add_argument("--export-discriminator", action="store_true", help="also export D")

    p = sub.add_parser("sample", help="generate images of a class", description=(
        "Generate one image per seed for a class and save them as a grid PNG (or one file per seed with --out DIR/)."))
    _add_weights(p)
    p.add_argument("--class", dest="cls", required=True, help="class display name, folder name or index")
    p.add_argument("--seeds", default="0-7", help="seeds, e.g. 0-7,12 (default 0-7)")
    p.add_argument("--truncation", type=float, default=1.0, help="scale of z (1 = prior, lower = less varied; default 1)")
    p.add_argument("--columns", type=int, default=8, help="images per grid row (default 8)")
    p.add_argument("--out", required=True, help="output PNG path")

    p = sub.add_parser("push", help="upload a weights folder to the Hugging Face Hub", description=(
        "Upload config.json + *.safetensors (+ README.md model card, generated if absent) to a Hub model repo."))
    p.add_argument("--weights", required=True, help="weights folder to upload")
    p.add_argument("--repo", required=True, help="Hub repo id owner/name (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--revision", default=None, help="branch to upload to (default main)")
    p.add_argument("--token", default=None, help="Hub token (default: the one from `hf auth login` / HF_TOKEN)")
    return ap


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available; use --device cpu")
    return name


def cmd_train(a: argparse.Namespace) -> int:
    import torch

    from .config import ModelConfig, default_widths
    from .data import load_images
    from .train import train

    if a.threads:
        torch.set_num_threads(a.threads)
    tcfg = TrainConfig(
        steps=a.steps, batch_size=a.batch_size, lr=a.lr, betas=(a.beta1, a.beta2), lambda1=a.lambda1,
        lambda2=a.lambda2, lambda3=a.lambda3, lambda4=a.lambda4, momentum=a.momentum, seed=a.seed,
        val_fraction=a.val_fraction, log_every=a.log_every, sample_every=a.sample_every,
        checkpoint_every=a.checkpoint_every, diffaugment=a.diffaugment, ema_decay=a.ema_decay,
        grad_clip=a.grad_clip, lr_schedule=a.lr_schedule, warmup_steps=a.warmup_steps, device=a.device,
        export_fp16=not a.no_fp16_export, export_discriminator=a.export_discriminator,
    )
    resolution = a.resolution
    if a.resume:  # the checkpoint's resolution wins
        ckpt = Path(a.out) / "model_config.json"
        if ckpt.is_file():
            resolution = json.loads(ckpt.read_text())["resolution"]
    data = load_images(a.data, resolution)
    base = a.base_channels or default_widths(resolution)["base_channels"]
    mcfg = ModelConfig.for_resolution(resolution, data.num_classes, z_dim=a.z_dim, base_channels=base,
                                      max_channels=max(a.max_channels, base))
    export = train(data, a.out, tcfg, mcfg, resume=a.resume)
    print(f"done: weights in {export}")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from .train import export_checkpoint

    print(f"wrote {export_checkpoint(a.run, a.out, fp16=not a.no_fp16, include_discriminator=a.export_discriminator)}")
    return 0


def cmd_sample(a: argparse.Namespace) -> int:
    from .hub import resolve_weights
    from .images import make_grid, save_png
    from .inference import sample
    from .seeds import parse_seeds

    model = resolve_weights(a.weights, a.revision, _device(a.device), fallback=False).model
    seeds = parse_seeds(a.seeds)
    x = sample(model, a.cls, seeds, truncation=a.truncation)
    save_png(make_grid(x, ncol=min(a.columns, len(seeds)), pad=0 if len(seeds) == 1 else 2), a.out)
    print(f"wrote {a.out} ({len(seeds)} image(s) of class {model.config.class_names[model.config.class_index(a.cls)]!r})")
    return 0


def cmd_push(a: argparse.Namespace) -> int:
    from .hub import push

    print(f"uploaded: {push(a.weights, a.repo, token=a.token, private=a.private, revision=a.revision)}")
    return 0


COMMANDS = {"train": cmd_train, "export": cmd_export, "sample": cmd_sample, "push": cmd_push}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError) as e:  # our errors subclass these; one line unless --debug
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
