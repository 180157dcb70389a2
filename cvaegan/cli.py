"""`python -m cvaegan <command>`: one argparse parser per command, each making one call into the package."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import TrainConfig
from .errors import CVAEGANError, InputError


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
    p.add_argument("--ema-decay", type=float, default=None, help="EMA of G's and E's weights for export/samples, e.g. 0.999 (default off)")
    p.add_argument("--variant", default=d.variant, choices=["cvae-gan", "cvae", "cgan", "fm-cgan"],
                   help="model for the paper's Table 1 ablation: the full CVAE-GAN (default), CVAE (E+G, KL + L2), "
                        "CGAN (-log D(G(z)) generator loss), FM-CGAN (mean feature matching generator loss)")
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
    p.add_argument("--no-ema", action="store_true", help="export the raw generator even if the run kept an EMA of it")

    p = sub.add_parser("sample", help="generate images of a class", description=(
        "Generate one image per seed for a class and save them as a grid PNG (or one file per seed with --out DIR/)."))
    _add_weights(p)
    p.add_argument("--class", dest="cls", required=True, help="class display name, folder name or index")
    p.add_argument("--seeds", default="0-7", help="seeds, e.g. 0-7,12 (default 0-7)")
    p.add_argument("--truncation", type=float, default=1.0, help="scale of z (1 = prior, lower = less varied; default 1)")
    p.add_argument("--columns", type=int, default=8, help="images per grid row (default 8)")
    p.add_argument("--out", required=True, help="output PNG path")

    p = sub.add_parser("swap", help="one z rendered as many classes (the paper's category change)", description=(
        "Render one latent code as several classes. The code comes from --seed, or from --image (encoded by E "
        "with --source-class, or the class C predicts). Writes a one-row grid PNG."))
    _add_weights(p)
    p.add_argument("--seed", type=int, default=None, help="seed of z (when no --image)")
    p.add_argument("--image", default=None, help="photo to encode instead of a seed")
    p.add_argument("--source-class", default=None, help="class of --image (default: C's prediction)")
    p.add_argument("--classes", default=None, help="comma-separated target classes (names or indices; default: the first 8)")
    p.add_argument("--truncation", type=float, default=1.0, help="scale of z from --seed (default 1)")
    p.add_argument("--out", required=True, help="output PNG path")

    p = sub.add_parser("interpolate", help="morph between two endpoints (GIF or PNG strip)", description=(
        "Interpolate between endpoint A and B, each (class, seed) or a photo. z is slerped, the class one-hot "
        "weights are mixed linearly. --out ending in .gif writes an animation, otherwise a PNG strip."))
    _add_weights(p)
    for e in ("a", "b"):
        p.add_argument(f"--class-{e}", default=None, help=f"class of endpoint {e.upper()}")
        p.add_argument(f"--seed-{e}", type=int, default=None, help=f"seed of endpoint {e.upper()}")
        p.add_argument(f"--image-{e}", default=None, help=f"photo for endpoint {e.upper()} (class given or predicted)")
    p.add_argument("--mode", default="both", choices=["z", "class", "both"], help="what changes along the path (default both)")
    p.add_argument("--frames", type=int, default=8, help="number of frames, endpoints included (default 8)")
    p.add_argument("--out", required=True, help="output .gif or .png")

    p = sub.add_parser("directions", help="compute latent directions (slider axes) and save them with the weights", description=(
        "Encode the training images with E, then save the top principal directions of z and one direction per "
        "attr_* column of metadata.csv (ridge regression of the attribute on E's codes) into "
        "WEIGHTS/directions.safetensors + config.json. With --direction-judge the attr_* directions are fitted on "
        "generated samples instead (the judge's estimate of each attribute regressed on z), which follows how G "
        "responds to z; see README, 'Latent directions'. Also re-checks them (directions.png, figures.json and the "
        "card's 'Latent directions' section are replaced; the networks are not touched)."))
    p.add_argument("--weights", required=True, help="local weights folder to add the directions to")
    p.add_argument("--data", required=True, help="the training data (folder or .tar) with its metadata.csv")
    p.add_argument("--components", type=int, default=8, help="number of principal directions (default 8)")
    p.add_argument("--direction-judge", default=None, help="attribute judge folder (`cvaegan judge --attributes`): "
                   "fit the attr_* directions on generated samples it scores")
    p.add_argument("--judge-samples", type=int, default=4096, help="generated samples for --direction-judge (default 4096)")
    p.add_argument("--decorrelate", action="store_true", help="make each attr_* direction orthogonal to the other "
                   "attributes' regression weights, so that its slider leaves them unchanged to first order")
    p.add_argument("--attribute-judge", default=None, help="attribute judge folder that re-measures every direction "
                   "for figures.json and the card (best another one than --direction-judge)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run (default auto)")

    p = sub.add_parser("reconstruct", help="photo -> E -> G", description=(
        "Encode a photo with E and regenerate it with G at the model resolution; prints the class used."))
    _add_weights(p)
    p.add_argument("--image", required=True, help="input photo (any size or mode)")
    p.add_argument("--class", dest="cls", default=None, help="class of the photo (default: C's prediction)")
    p.add_argument("--out", required=True, help="output PNG path")

    p = sub.add_parser("inpaint", help="fill the masked part of a photo", description=(
        "The paper's iterative inpainting: encode, generate, paste the known pixels back, K times; optional "
        "refinement of z. Mask: any image, non-zero (or alpha > 0) = missing. Known pixels are kept exactly."))
    _add_weights(p)
    p.add_argument("--image", required=True, help="input photo (any size or mode)")
    p.add_argument("--mask", required=True, help="mask image (white/opaque = fill in)")
    p.add_argument("--class", dest="cls", default=None, help="class of the photo (default: C's prediction)")
    p.add_argument("--iterations", type=int, default=4, help="encode-generate-paste rounds (default 4)")
    p.add_argument("--refine-steps", type=int, default=0, help="extra steps optimising z on the known pixels (default 0)")
    p.add_argument("--no-blend", action="store_true", help="do not colour-match the fill to its border")
    p.add_argument("--out", required=True, help="output image at the input's size")

    p = sub.add_parser("superres", help="super-resolve a small photo by projecting onto G", description=(
        "Upsample a photo smaller than the model resolution: start from E's code of the bicubic upsample and "
        "optimise z so the downsampled output matches the input. Prints the PSNR against the input."))
    _add_weights(p)
    p.add_argument("--image", required=True, help="small input photo (e.g. 16 or 32 px)")
    p.add_argument("--class", dest="cls", default=None, help="class of the photo (default: C's prediction)")
    p.add_argument("--steps", type=int, default=100, help="optimisation steps (default 100)")
    p.add_argument("--out", required=True, help="output PNG at model resolution")

    p = sub.add_parser("augment", help="write an ImageFolder of generated images for data augmentation", description=(
        "Generate N images per class into OUT/<class_folder>/<seed>.png and record every seed in OUT/seeds.csv."))
    _add_weights(p)
    p.add_argument("--per-class", type=int, required=True, help="images per class")
    p.add_argument("--classes", default=None, help="comma-separated classes (default: all)")
    p.add_argument("--first-seed", type=int, default=0, help="seed of the first image (default 0)")
    p.add_argument("--truncation", type=float, default=1.0, help="scale of z (default 1)")
    p.add_argument("--out", required=True, help="output folder")

    p = sub.add_parser("release", help="export a run as a published weights folder with figures and a model card",
                       description=("Export RUN's checkpoint into OUT, add latent directions (PCs + attr_* columns), "
                                    "measure C's top-1 and reconstruction PSNR on the run's held-out split, and write "
                                    "samples.png, thumbnails.png, loss_curves.png and README.md (the model card)."))
    p.add_argument("--run", required=True, help="run folder (checkpoint.pt, metrics.jsonl, train_config.json)")
    p.add_argument("--out", required=True, help="weights folder to write, e.g. weights/faces")
    p.add_argument("--data", required=True, help="the run's training data (folder or .tar + metadata.csv)")
    p.add_argument("--name", required=True, help="data set key for the card: faces, flowers, birds or your own")
    p.add_argument("--hardware", default=None, help="what it was trained on, for the card (default: this CPU)")
    p.add_argument("--notes", default="", help="extra paragraph for the card (e.g. known weaknesses)")
    p.add_argument("--components", type=int, default=8, help="principal directions to save (default 8)")
    p.add_argument("--examples", default=None, help="also write generated example images + masks for the app here (e.g. examples)")
    p.add_argument("--no-ema", action="store_true", help="ship the raw generator even if the run kept an EMA of it")
    p.add_argument("--attribute-judge", default=None, help="attribute judge folder (`cvaegan judge --attributes`): "
                   "re-measure each direction on generated images for the model card")
    p.add_argument("--direction-judge", default=None, help="attribute judge folder: fit the attr_* directions on "
                   "generated samples it scores (default: on E's codes of the training photos). Use a different "
                   "judge (another --seed) for --attribute-judge so that the check is independent of the fit")
    p.add_argument("--decorrelate", action="store_true", help="make each attr_* direction orthogonal to the other "
                   "attributes' regression weights (fewer side effects, see `directions --help`)")

    p = sub.add_parser("judge", help="train an independent classifier (the evaluation's judge) on real images", description=(
        "Train a judge (residual net, GroupNorm, augmentation, its own seed; different from the model's C) on the 90%% "
        "training split of DATA (per class, the same split as `train --val-fraction 0.1`) and report its top-1 on "
        "the held-out 10%%. Writes OUT/config.json + OUT/judge.safetensors."))
    p.add_argument("--data", required=True, help="folder or .tar in ImageFolder layout")
    p.add_argument("--out", required=True, help="judge folder to write")
    p.add_argument("--resolution", type=int, default=64, help="input side in pixels (default 64)")
    p.add_argument("--epochs", type=int, default=20, help="passes over the training split (default 20)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step (default 64)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate, one-cycle schedule (default 2e-3)")
    p.add_argument("--seed", type=int, default=7, help="judge seed (default 7; the generator's default is 0)")
    p.add_argument("--extra", default=None, help="extra labelled images to train on too (e.g. `cvaegan augment` output)")
    p.add_argument("--attributes", action="store_true", help="train an attribute judge instead: regress the attr_* "
                   "columns of metadata.csv (reports R^2 per attribute); `release --attribute-judge` uses it to "
                   "re-measure the named latent directions")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train (default auto)")

    p = sub.add_parser("evaluate", help="measure weights with a judge: discriminability, FID/KID/IS (judge space), "
                       "diversity, reconstruction, inpainting vs baselines", description=(
        "Write a JSON report: the judge's top-1 on generated samples of each class and on held-out real images, "
        "inception score / FID / KID / precision-recall-density-coverage in the judge's feature space (not "
        "comparable to Inception-based values), 1 - MS-SSIM intra-class diversity, E->G reconstruction PSNR/SSIM, "
        "and inpainting PSNR/SSIM inside centre-box and brush-stroke masks against OpenCV Telea, Navier-Stokes "
        "and a mean-colour fill. Held-out images: the per-class 10%% split of `train --val-fraction 0.1`."))
    _add_weights(p)
    p.add_argument("--judge", required=True, help="judge folder from `cvaegan judge`")
    p.add_argument("--data", required=True, help="the data set the weights were trained on")
    p.add_argument("--out", required=True, help="report .json to write")
    p.add_argument("--samples-per-class", type=int, default=8, help="generated images per class (default 8)")
    p.add_argument("--classes", default=None, help="comma-separated classes to generate (default: all)")
    p.add_argument("--inpaint-images", type=int, default=64, help="held-out images for the inpainting figures (default 64)")
    p.add_argument("--card", action="store_true", help="also write evaluation.json and the judge's figures into the "
                   "weights folder's model card (README.md)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")

    p = sub.add_parser("push", help="upload a weights folder to the Hugging Face Hub", description=(
        "Upload config.json + *.safetensors (+ README.md model card, generated if absent) to a Hub model repo."))
    p.add_argument("--weights", required=True, help="weights folder to upload")
    p.add_argument("--repo", required=True, help="Hub repo id owner/name (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--revision", default=None, help="branch to upload to (default main)")
    p.add_argument("--token", default=None, help="Hub token (default: the one from `hf auth login` / HF_TOKEN)")
    _enrol_parser(sub)  # defined beside cmd_enrol
    return ap


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: CUDA is not available; use --device cpu")
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
        export_fp16=not a.no_fp16_export, export_discriminator=a.export_discriminator, variant=a.variant,
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

    print(f"wrote {export_checkpoint(a.run, a.out, fp16=not a.no_fp16, include_discriminator=a.export_discriminator, use_ema=not a.no_ema)}")
    return 0


def cmd_sample(a: argparse.Namespace) -> int:
    from .images import make_grid, save_png
    from .inference import sample
    from .seeds import parse_seeds

    model = _model(a)
    seeds = parse_seeds(a.seeds)
    x = sample(model, a.cls, seeds, truncation=a.truncation)
    save_png(make_grid(x, ncol=min(a.columns, len(seeds)), pad=0 if len(seeds) == 1 else 2), a.out)
    print(f"wrote {a.out} ({len(seeds)} image(s) of class {model.config.class_names[model.config.class_index(a.cls)]!r})")
    return 0


def cmd_release(a: argparse.Namespace) -> int:
    from .release import release

    figures = release(a.run, a.out, a.data, a.name, a.hardware, a.notes, a.components, a.examples, use_ema=not a.no_ema,
                      attribute_judge=a.attribute_judge, direction_judge=a.direction_judge, decorrelate=a.decorrelate)
    print(json.dumps({k: v for k, v in figures.items() if k not in ("c_top1_generated_per_class", "directions")}, indent=1))
    return 0


def cmd_push(a: argparse.Namespace) -> int:
    from .hub import push

    print(f"uploaded: {push(a.weights, a.repo, token=a.token, private=a.private, revision=a.revision)}")
    return 0


def _model(a: argparse.Namespace):
    from .hub import resolve_weights

    return resolve_weights(a.weights, a.revision, _device(a.device), fallback=False).model


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def cmd_swap(a: argparse.Namespace) -> int:
    from .images import make_grid, save_png
    from .inference import endpoint, swap

    model = _model(a)
    if a.image is None and a.seed is None:
        raise InputError("give --seed or --image")
    z, _ = endpoint(model, a.source_class if a.image else 0, a.seed, a.image, a.truncation)
    classes = _split(a.classes) or list(range(min(8, model.config.num_classes)))
    x = swap(model, z, classes)
    save_png(make_grid(x, ncol=len(classes)), a.out)
    print(f"wrote {a.out}")
    return 0


def cmd_interpolate(a: argparse.Namespace) -> int:
    from .images import make_grid, save_png
    from .inference import endpoint, interpolate, save_gif

    model = _model(a)
    ea = endpoint(model, a.class_a, a.seed_a, a.image_a)
    eb = endpoint(model, a.class_b, a.seed_b, a.image_b)
    frames = interpolate(model, ea, eb, a.frames, a.mode)
    if a.out.lower().endswith(".gif"):
        save_gif(frames, a.out)
    else:
        save_png(make_grid(frames, ncol=len(frames)), a.out)
    print(f"wrote {a.out} ({a.frames} frames)")
    return 0


def cmd_directions(a: argparse.Namespace) -> int:
    from .release import refresh_directions

    figures = refresh_directions(a.weights, a.data, a.components, a.attribute_judge, a.direction_judge, a.decorrelate,
                                 _device(a.device), a.judge_samples)
    names = list(figures["directions"])
    print(f"saved {len(names)} directions to {a.weights}: {', '.join(names)} (checked in directions.png, "
          "figures.json and the card's 'Latent directions' section)")
    for name, f in figures["direction_fits"].items():
        print(f"  {name}: fitted on {f['source']} (n={f['n']}, R^2 of the linear fit {f['r2']:.2f}"
              f"{', decorrelated' if f['decorrelated'] else ''})")
    for name, r in figures["directions"].items():
        if "per_unit" in r:
            print(f"  {name}: re-measured {r['per_unit']:.2f} SD per slider unit (1 = as intended)")
    return 0


def _class_note(model, idx: int, prob) -> str:
    name = model.config.class_names[idx]
    return f"class {name!r}" + (f" (predicted by C, p={prob:.2f})" if prob is not None else "")


def cmd_reconstruct(a: argparse.Namespace) -> int:
    from .images import save_png, to_pil
    from .inference import reconstruct

    model = _model(a)
    x, idx, prob = reconstruct(model, a.image, a.cls)
    save_png(to_pil(x), a.out)
    print(f"wrote {a.out}; {_class_note(model, idx, prob)}")
    return 0


def cmd_inpaint(a: argparse.Namespace) -> int:
    from .inference import inpaint

    model = _model(a)
    r = inpaint(model, a.image, a.mask, a.cls, a.iterations, a.refine_steps, blend=not a.no_blend)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    r["image"].save(a.out)
    note = "the mask is empty: nothing to fill" if r["class"] is None else _class_note(model, r["class"], r["probability"])
    print(f"wrote {a.out}; {note}")
    return 0


def cmd_superres(a: argparse.Namespace) -> int:
    from .images import save_png
    from .inference import superresolve

    model = _model(a)
    r = superresolve(model, a.image, a.cls, a.steps)
    save_png(r["image"], a.out)
    print(f"wrote {a.out}; PSNR of the downsampled result vs the input: {r['psnr']:.2f} dB; "
          f"{_class_note(model, r['class'], r['probability'])}")
    return 0


def cmd_augment(a: argparse.Namespace) -> int:
    from .inference import augment

    model = _model(a)
    out = augment(model, a.out, a.per_class, a.first_seed, _split(a.classes), a.truncation)
    print(f"wrote {out} (seeds in {out / 'seeds.csv'})")
    return 0


def cmd_judge(a: argparse.Namespace) -> int:
    import torch

    from .data import load_images, remap_classes
    from .judge import train_judge

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.epochs < 1:
        raise InputError("--epochs must be at least 1")
    data = load_images(a.data, a.resolution)
    extra = remap_classes(load_images(a.extra, a.resolution), data) if a.extra else None
    cfg = train_judge(data, a.out, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed, extra=extra,
                      device=_device(a.device), attributes=a.attributes)
    t = cfg.training
    if a.attributes:
        r2 = ", ".join(f"{k} {v:.3f}" for k, v in t["val_r2"].items())
        print(f"attribute judge R^2 on {t['val_images']} held-out images: {r2}; wrote {a.out}")
        return 0
    print(f"judge top-1 on {t['val_images']} held-out images: {t['val_top1']:.4f} (chance {1 / cfg.num_classes:.4f}); "
          f"wrote {a.out}")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    import torch

    from .data import load_images
    from .evaluate import evaluate, write_report
    from .judge import load_judge

    if a.threads:
        torch.set_num_threads(a.threads)
    model = _model(a)
    judge = load_judge(a.judge, device=model.device)
    data = load_images(a.data, model.config.resolution)
    classes = None
    if a.classes:
        from .inference import class_indices
        classes = class_indices(model, _split(a.classes))
    report = evaluate(model, judge, data, a.samples_per_class, classes, a.inpaint_images)
    write_report(report, a.out)
    if a.card:
        import dataclasses

        from .card import attach_judge

        if not a.weights or not Path(a.weights).is_dir():
            raise InputError("--card needs --weights to be a local weights folder")
        attach_judge(a.weights, report, dataclasses.asdict(judge.config))
    d = report["discriminability"]
    print(f"judge top-1: generated {d['judge_top1_generated']:.4f}, held-out real {d['judge_top1_real_val']:.4f} "
          f"(chance {report['chance_top1']:.4f}); FID(judge) {report['fid_judge']:.3f}; "
          f"reconstruction {report['reconstruction']['psnr_db']:.2f} dB; wrote {a.out}")
    return 0


COMMANDS = {"judge": cmd_judge, "evaluate": cmd_evaluate, "train": cmd_train, "export": cmd_export, "sample": cmd_sample, "swap": cmd_swap,
            "interpolate": cmd_interpolate, "directions": cmd_directions, "reconstruct": cmd_reconstruct,
            "inpaint": cmd_inpaint, "superres": cmd_superres, "augment": cmd_augment, "release": cmd_release, "push": cmd_push}


def _enrol_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("enrol", help="add a new class (a person, a species) from a few photos", description=(
        "Learn a new class from 3-10 photos without changing the weights: only its label embeddings for G and E "
        "and its row of C's output layer are learned (from the nearest existing class). Writes them to a small "
        "class file --out; load it with CVAEGAN.from_pretrained(WEIGHTS, extra_classes=[FILE]). Photos are "
        "centre-cropped and resized like the training data: frame them the same way (faces: aligned like "
        "CelebA's img_align_celeba, eyes level, face centred)."))
    _add_weights(p)
    p.add_argument("--images", required=True, nargs="+", metavar="PATH",
                   help="a folder of photos, or the photo files (at least 3, 5-10 recommended)")
    p.add_argument("--name", required=True, help="display name of the new class (must not exist yet)")
    p.add_argument("--out", required=True, help="class file to write, e.g. ada.safetensors (keep it out of a "
                   "weights folder you push: `push` uploads every .safetensors)")
    p.add_argument("--steps", type=int, default=200, help="optimisation steps (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise and the mirroring (default 0)")
    p.add_argument("--preview", default=None, metavar="PNG", help="also write a sheet: the photos above samples of the new class")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    return p


def cmd_enrol(a: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from .enrol import add_classes, before_after, enrol, load_photos, save_classes
    from .hub import load_pretrained
    from .images import save_png

    if a.threads:
        torch.set_num_threads(a.threads)
    images = a.images[0] if len(a.images) == 1 and Path(a.images[0]).is_dir() else a.images
    if a.weights and (Path(a.weights) / "discriminator.safetensors").is_file():  # D's features help when present
        model = load_pretrained(a.weights, device=_device(a.device), with_discriminator=True)
    else:
        model = _model(a)
    with tqdm(total=a.steps, desc="enrol", dynamic_ncols=True) as bar:
        cls = enrol(model, images, a.name, steps=a.steps, seed=a.seed,
                    progress=lambda f, msg: (bar.update(1), bar.set_postfix_str(msg.split(": ", 1)[-1])))
    save_classes(cls, a.out)
    for w in cls.warnings:
        print(f"warning: {w}", file=sys.stderr)
    i = cls.info
    print(f"enrolled {cls.name!r} from {i['photos']} photos in {i['seconds']:.1f} s (started from {i['init_from']!r}); "
          f"reconstruction {i['recon_psnr_db_before']:.2f} -> {i['recon_psnr_db_after']:.2f} dB; C picks it for "
          f"{i['c_top1_photos']:.0%} of the photos and {i['c_top1_samples']:.0%} of 16 samples; wrote {a.out}")
    if a.preview:
        add_classes(model, cls)
        save_png(before_after(model, load_photos(images, model.config.resolution), cls.name), a.preview)
        print(f"wrote {a.preview}")
    return 0


COMMANDS["enrol"] = cmd_enrol


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (CVAEGANError, OSError) as e:  # ours, or the OS's (paths, permissions): one line unless --debug
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
