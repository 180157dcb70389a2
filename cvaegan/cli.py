"""`python -m cvaegan <command>`: one argparse parser per command, each making one call into the package."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
from pathlib import Path

from .config import MODEL_PRESETS, ModelConfig, TrainConfig, default_widths
from .errors import CVAEGANError, InputError

REFUSED_EXIT = 3  # `release --only-if-better` when the judge does not find the candidate better (gate.GateRefused)


def _add_weights(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights",
        default=None,
        metavar="DIR_OR_REPO",
        help="weights folder or Hub repo id owner/name (default: the bundled weights/)",
    )
    p.add_argument("--revision", default=None, help="Hub branch, tag or commit (with a repo id)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run (default auto)")


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: CUDA is not available; use --device cpu")
    return name


TRAIN_RUN_OPTIONS = ("data", "out", "resume", "init_from", "threads")  # `train` options that are not config fields
TRAIN_DEFAULT_PRESET = next(f.metadata["cli_default"] for f in dataclasses.fields(TrainConfig) if f.name == "preset")


def _fmt(value) -> str:
    return "off" if value is None or value == "" else str(value)


def add_config_options(p: argparse.ArgumentParser, cls, only_cli: bool = True) -> list[str]:
    """One option per field of the dataclass `cls` (TrainConfig / ModelConfig), from its metadata: help text,
    choices, option strings. Options default to argparse.SUPPRESS, so the namespace holds only what the user
    typed (presets fill the rest); help shows the field's default. Returns the field names added."""
    import typing

    hints = typing.get_type_hints(cls)
    added = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if only_cli and meta.get("cli", True) is False:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        default = meta.get("cli_default", default)
        help_ = f"{meta.get('help', '')} (default: {_fmt(default)})".replace("%", "%%")
        flags = meta.get("flags") or (f"--{f.name.replace('_', '-')}",)
        kind = hints[f.name]
        if kind is bool:
            pos, neg = (flags + (f"--no-{flags[0][2:]}",))[:2]
            p.add_argument(pos, dest=f.name, action="store_true", default=argparse.SUPPRESS, help=help_)
            p.add_argument(neg, dest=f.name, action="store_false", default=argparse.SUPPRESS, help=f"turn {pos} off")
        elif f.name == "betas":
            for i, flag in enumerate(flags):
                p.add_argument(
                    flag,
                    dest=f"betas_{i}",
                    type=float,
                    default=argparse.SUPPRESS,
                    help=f"Adam beta{i + 1} (default: {default[i]}; paper: unknown (?))",
                )
        else:
            base = typing.get_args(kind)[0] if typing.get_origin(kind) in (typing.Union, types.UnionType) else kind
            p.add_argument(
                *flags, dest=f.name, type=base, default=argparse.SUPPRESS, choices=meta.get("choices"), help=help_
            )
        added.append(f.name)
    return added


def _train_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train",
        help="train on a labelled image folder or .tar",
        description=(
            "Train CVAE-GAN on an ImageFolder directory (<class_folder>/<image>) or an uncompressed .tar of one. "
            "Writes metrics.jsonl, sample grids, checkpoint.pt and export/ into --out. Options start from --preset "
            "(default v2, the recipe measured best per CPU-hour); options you give win. "
            "Multi-GPU: torchrun --nproc_per_node=N -m cvaegan train ..."
        ),
    )
    p.add_argument(
        "--data",
        required=True,
        help="folder or .tar in ImageFolder layout (metadata.csv beside it gives display names)",
    )
    p.add_argument("--out", required=True, help="run folder (created); holds the checkpoint, samples and export/")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint.pt")
    p.add_argument(
        "--init-from",
        default=None,
        metavar="WEIGHTS",
        help="warm start: all four networks and the "
        "running feature means from a weights folder that carries discriminator.safetensors (fresh "
        "optimisers; the preset's warm-start --pretrain-steps are skipped unless given); its architecture wins "
        "over the architecture options, except --g-cond cbn, which converts a concat G exactly; the photos the "
        "weights' training held out stay out (--val-fraction defaults to theirs); it says which recipe options "
        "differ from the ones the weights record (changing the losses at a warm start loses ground first)",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    g = p.add_argument_group("architecture (ModelConfig; saved with the weights)")
    add_config_options(g, ModelConfig)
    g = p.add_argument_group("training (TrainConfig; saved as train_config.json)")
    add_config_options(g, TrainConfig)
    return p


def model_options() -> set[str]:
    """The ModelConfig fields `train` takes as options (the architecture a user can choose)."""
    return {f.name for f in dataclasses.fields(ModelConfig) if f.metadata.get("cli", True)}


def differs(option: str, run_value, given_value) -> str:
    """How a --resume error names an option whose given value is not the run's."""
    return f"--{option.replace('_', '-')} (the run has {run_value!r}, given {given_value!r})"


def train_configs(
    a: argparse.Namespace, num_classes: int, resolution: int | None = None
) -> tuple[TrainConfig, ModelConfig]:
    """The run's configs: the preset's values, then every option the user gave."""
    given = vars(a)
    preset = given.get("preset", TRAIN_DEFAULT_PRESET)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    over = {k: v for k, v in given.items() if k in fields and k != "preset"}
    if "betas_0" in given or "betas_1" in given:
        d = TrainConfig.from_preset(preset).betas
        over["betas"] = (given.get("betas_0", d[0]), given.get("betas_1", d[1]))
    tcfg = TrainConfig.from_preset(preset, **over)
    options = model_options()
    arch = {**MODEL_PRESETS[preset], **{k: v for k, v in given.items() if k in options}}
    given_res = arch.pop("resolution", 64)
    res = resolution or given_res
    widths = default_widths(res)
    arch.setdefault("base_channels", widths["base_channels"])
    arch["max_channels"] = max(arch.get("max_channels", widths["max_channels"]), arch["base_channels"])
    return tcfg, ModelConfig.for_resolution(res, num_classes, **arch)


def run_json(out: str, name: str) -> dict | None:
    """A run folder's config file (--resume), or None when the run has none yet. A file that is not valid JSON,
    not text or not a JSON object is named in a one-line error, and left as it is."""
    from .serialization import read_json

    path = Path(out) / name
    if not path.is_file():
        return None
    raw = read_json(path, "", "restore it or start a new run in another --out")
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(raw).__name__}; restore it or start a new run")
    return raw


def resume_config(a: argparse.Namespace, tcfg: TrainConfig) -> TrainConfig:
    """--resume: the run's own training config (train_config.json in --out), with the options a resumed run may
    change (train.RESUME_OPTIONS) taken from the command line. steps, device, budget and snapshot marks always
    come from the command line (as before); the others only when given. Any other option given with a value
    other than the run's is an error, rather than silently ignored."""
    from .train import RESUME_OPTIONS

    raw = run_json(a.out, "train_config.json")
    if raw is None:  # train() reports the missing checkpoint
        return tcfg
    saved = TrainConfig.from_dict(raw)
    given = vars(a)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    differ = [
        differs(k, getattr(saved, k), getattr(tcfg, k))
        for k in sorted(fields & set(given))
        if k not in RESUME_OPTIONS and getattr(tcfg, k) != getattr(saved, k)
    ]
    if ("betas_0" in given or "betas_1" in given) and tcfg.betas != saved.betas:
        differ.append(f"--betas (the run has {saved.betas}, given {tcfg.betas})")
    if differ:
        raise InputError(
            f"--resume continues {a.out} as it was configured, but these options differ from it: {'; '.join(differ)}. "
            f"Drop them to resume, or start a new run in another --out (--init-from warm-starts from weights). "
            f"A resumed run may change only: {', '.join('--' + k.replace('_', '-') for k in RESUME_OPTIONS)}."
        )
    always = ("steps", "device", "budget_minutes", "snapshot_minutes")
    return dataclasses.replace(saved, **{k: getattr(tcfg, k) for k in RESUME_OPTIONS if k in always or k in given})


def resume_architecture(a: argparse.Namespace) -> int | None:
    """--resume: the run's resolution (from model_config.json in --out; None before its first checkpoint). The
    checkpoint's architecture is the one trained, so an architecture option given with another value (say
    --base-channels 16 to a base 32 run) is an error that names it, before any photo is read, rather than
    silently ignored. A key missing from an older run's file is compared with the value train() gives it on
    resume (the field's default), so old run folders are checked too."""
    raw = run_json(a.out, "model_config.json")
    if raw is None:  # train() reports the missing checkpoint
        return None
    saved = ModelConfig.from_dict(raw, source=str(Path(a.out) / "model_config.json")).to_dict()
    options = model_options()
    differ = [differs(k, saved[k], v) for k, v in sorted(vars(a).items()) if k in options and v != saved[k]]
    if differ:
        raise InputError(
            f"--resume continues {a.out} with the networks its checkpoint holds, but these architecture options "
            f"differ from them: {'; '.join(differ)}. Drop them to resume, or start a new run in another --out "
            f"(--init-from warm-starts from a weights folder)."
        )
    return saved["resolution"]


def init_from_config(a: argparse.Namespace, tcfg: TrainConfig) -> TrainConfig:
    """--init-from: the warm-start steps (plain CVAE + C, so that the feature-matching targets mean something
    when they start) are for networks that start from scratch; networks loaded from weights skip them unless
    --pretrain-steps is given."""
    if "pretrain_steps" in vars(a) or not tcfg.pretrain_steps:
        return tcfg
    print(
        f"note: --init-from: the preset's {tcfg.pretrain_steps} warm-start steps are skipped (give --pretrain-steps to keep them)"
    )
    return dataclasses.replace(tcfg, pretrain_steps=0)


def cmd_train(a: argparse.Namespace) -> int:
    import torch

    from .data import load_images
    from .train import train

    if a.threads:
        torch.set_num_threads(a.threads)
    resolution = getattr(a, "resolution", 64)
    if a.resume:  # the checkpoint's architecture wins; one given that differs from it is an error
        resolution = resume_architecture(a) or resolution
    elif a.init_from:
        from .hub import read_config

        resolution = read_config(Path(a.init_from)).resolution
    data = load_images(a.data, resolution)
    tcfg, mcfg = train_configs(a, data.num_classes, resolution)
    if a.resume:
        tcfg = resume_config(a, tcfg)
    elif a.init_from:
        tcfg = init_from_config(a, tcfg)
    init_g_cond = getattr(a, "g_cond", None) if a.init_from else None  # only when given: the weights' G otherwise
    export = train(data, a.out, tcfg, mcfg, resume=a.resume, init_from=a.init_from, init_g_cond=init_g_cond)
    print(f"done: weights in {export}")
    return 0


def _export_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export",
        help="export a run's checkpoint as a weights folder",
        description=(
            "Write config.json + *.safetensors from RUN/checkpoint.pt (e.g. to publish a run that is still training)."
        ),
    )
    p.add_argument("--run", required=True, help="run folder holding checkpoint.pt")
    p.add_argument("--out", required=True, help="weights folder to write")
    p.add_argument("--no-fp16", action="store_true", help="store float32 weights")
    p.add_argument(
        "--no-discriminator",
        dest="export_discriminator",
        action="store_false",
        default=True,
        help="leave out D and the running feature means (then `train --init-from` cannot use the folder)",
    )
    p.add_argument(
        "--export-discriminator",
        dest="export_discriminator",
        action="store_true",
        help="export D and the running feature means (the default; kept for old scripts)",
    )
    p.add_argument("--no-ema", action="store_true", help="export the raw generator even if the run kept an EMA of it")
    p.add_argument(
        "--snapshot",
        type=float,
        default=None,
        metavar="MINUTES",
        help="export the checkpoint the run kept at MINUTES CPU-minutes (`train --snapshot-minutes`: "
        "RUN/snapshots/minute_MINUTES.pt) instead of its last one, e.g. when it got worse later",
    )
    return p


def cmd_export(a: argparse.Namespace) -> int:
    from .train import export_checkpoint

    path = export_checkpoint(
        a.run,
        a.out,
        fp16=not a.no_fp16,
        include_discriminator=a.export_discriminator,
        use_ema=not a.no_ema,
        snapshot=a.snapshot,
    )
    print(f"wrote {path}")
    return 0


def _sample_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "sample",
        help="generate images of a class",
        description=(
            "Generate one image per seed for a class and save them as a grid PNG (or one file per seed with --out DIR/)."
        ),
    )
    _add_weights(p)
    p.add_argument("--class", dest="cls", required=True, help="class display name, folder name or index")
    p.add_argument("--seeds", default="0-7", help="seeds, e.g. 0-7,12 (default 0-7)")
    p.add_argument(
        "--truncation", type=float, default=1.0, help="scale of z (1 = prior, lower = less varied; default 1)"
    )
    p.add_argument("--columns", type=int, default=8, help="images per grid row (default 8)")
    p.add_argument("--out", required=True, help="output PNG path")
    return p


def cmd_sample(a: argparse.Namespace) -> int:
    from .images import make_grid, save_png
    from .inference import sample
    from .seeds import parse_seeds

    model = _model(a)
    seeds = parse_seeds(a.seeds)
    x = sample(model, a.cls, seeds, truncation=a.truncation)
    save_png(make_grid(x, ncol=min(a.columns, len(seeds)), pad=0 if len(seeds) == 1 else 2), a.out)
    print(
        f"wrote {a.out} ({len(seeds)} image(s) of class {model.config.class_names[model.config.class_index(a.cls)]!r})"
    )
    return 0


def _release_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "release",
        help="export a run as a published weights folder with figures and a model card",
        description=(
            "Export RUN's checkpoint into OUT, add latent directions (PCs + attr_* columns), "
            "measure C's top-1 and reconstruction PSNR on the run's held-out split (of the classes it trained on: "
            "a run's --exclude-classes are dropped as in training and listed in the card), and write "
            "samples.png, thumbnails.jpg, directions.jpg, loss_curves.png and README.md (the model card). "
            "With --judge, the candidate is first compared with the weights already in OUT (RUN/gate.json); "
            "with --only-if-better too, OUT is replaced only if the judge says the candidate is better, "
            f"otherwise it is left untouched and the command exits with code {REFUSED_EXIT} (errors: 1). "
            "The folder must stay within 20 MiB and each file within 15 MiB."
        ),
    )
    p.add_argument("--run", required=True, help="run folder (checkpoint.pt, metrics.jsonl, train_config.json)")
    p.add_argument("--out", required=True, help="weights folder to write, e.g. weights/faces")
    p.add_argument("--data", required=True, help="the run's training data (folder or .tar + metadata.csv)")
    p.add_argument("--name", required=True, help="data set key for the card: faces, flowers, birds or your own")
    p.add_argument(
        "--hardware",
        default=None,
        help="what it was trained on, for the card (default: what the run's checkpoint recorded for each training "
        "process, consecutive ones on the same hardware together: CPU, cores, torch threads, GPU, reference speed, "
        "first step; for runs that recorded none, this machine)",
    )
    p.add_argument("--notes", default="", help="extra paragraph for the card (e.g. known weaknesses)")
    p.add_argument("--components", type=int, default=8, help="principal directions to save (default 8)")
    p.add_argument(
        "--examples", default=None, help="also write generated example images + masks for the app here (e.g. examples)"
    )
    p.add_argument("--no-ema", action="store_true", help="ship the raw generator even if the run kept an EMA of it")
    p.add_argument(
        "--attribute-judge",
        default=None,
        help="attribute judge folder (`cvaegan judge --attributes`): "
        "re-measure each direction on generated images for the model card",
    )
    p.add_argument(
        "--direction-judge",
        default=None,
        help="attribute judge folder: fit the attr_* directions on "
        "generated samples it scores (default: on E's codes of the training photos). Use a different "
        "judge (another --seed) for --attribute-judge so that the check is independent of the fit",
    )
    p.add_argument(
        "--decorrelate",
        action="store_true",
        help="make each attr_* direction orthogonal to the other "
        "attributes' regression weights (fewer side effects, see `directions --help`)",
    )
    p.add_argument(
        "--judge",
        default=None,
        metavar="JUDGE_FOLDER",
        help="class judge folder (`cvaegan judge`, trained on real photos of this data set; it may know more "
        "classes than the model: classes are matched by folder name): before writing OUT, measure the candidate "
        "and the weights already in OUT on the same classes and seeds (judge top-1 on samples, FID in the "
        "judge's features against held-out photos, reconstruction PSNR); writes RUN/gate.json and prints a table",
    )
    p.add_argument(
        "--only-if-better",
        action="store_true",
        help="with --judge: release only if the candidate's judge top-1 is clearly higher than the released "
        "weights' (--min-z) and its FID at most --fid-tolerance times theirs (an empty OUT always passes); "
        f"otherwise leave OUT untouched and exit with code {REFUSED_EXIT}",
    )
    p.add_argument(
        "--min-z",
        type=float,
        default=None,
        help="how clearly the candidate's top-1 must lead: McNemar's z over the samples both models drew from the "
        "same seeds (default gate.MIN_Z = 1.64: one-sided 95%%; 0: any lead)",
    )
    p.add_argument(
        "--fid-tolerance",
        type=float,
        default=1.1,
        help="how much worse the candidate's FID may be, as a factor of the released one's (default 1.1)",
    )
    p.add_argument(
        "--samples-per-class",
        type=int,
        default=10,
        help="generated samples per class and model for --judge (default 10)",
    )
    p.add_argument(
        "--gate-first-seed",
        type=int,
        default=None,
        help="first seed of the gate's samples (default evaluate.FIRST_SEED = 20,000, as every gate and model "
        "card). To confirm a snapshot picked as the best of several gates, gate it again on seeds it was not picked "
        "on, e.g. --gate-first-seed 30000 with more --samples-per-class: its lead on the seeds it was picked on is "
        "partly their luck",
    )
    p.add_argument(
        "--no-discriminator",
        action="store_true",
        help="leave D and the running feature means out of OUT (smaller; `train --init-from OUT` then cannot go on)",
    )
    p.add_argument(
        "--gate-only",
        action="store_true",
        help="with --judge: measure the gate only (RUN/gate.json and the table) and never touch OUT; exit 0 if "
        f"the candidate would be released, {REFUSED_EXIT} if not (for a working stretch with no time left to release)",
    )
    p.add_argument(
        "--snapshot",
        type=float,
        default=None,
        metavar="MINUTES",
        help="release (or gate) the checkpoint the run kept at MINUTES CPU-minutes (`train --snapshot-minutes`: "
        "RUN/snapshots/minute_MINUTES.pt) instead of its last one, e.g. when it got worse later; the card says so",
    )
    return p


def cmd_release(a: argparse.Namespace) -> int:
    from .gate import GateRefused, table
    from .release import release

    try:
        figures = release(
            a.run,
            a.out,
            a.data,
            a.name,
            a.hardware,
            a.notes,
            a.components,
            a.examples,
            use_ema=not a.no_ema,
            attribute_judge=a.attribute_judge,
            direction_judge=a.direction_judge,
            decorrelate=a.decorrelate,
            judge=a.judge,
            only_if_better=a.only_if_better,
            fid_tolerance=a.fid_tolerance,
            **({} if a.min_z is None else {"min_z": a.min_z}),
            samples_per_class=a.samples_per_class,
            **({} if a.gate_first_seed is None else {"gate_first_seed": a.gate_first_seed}),
            include_discriminator=not a.no_discriminator,
            gate_only=a.gate_only,
            snapshot=a.snapshot,
        )
    except GateRefused as e:
        print(table(e.comparison))
        print(f"{e}; {a.out} was left untouched (comparison in {Path(a.run) / 'gate.json'})", file=sys.stderr)
        return REFUSED_EXIT
    if a.gate_only:
        print(table(figures["release_gate"]))
        print(f"the candidate would be released; --gate-only: {a.out} was left untouched")
        return 0
    skip = ("c_top1_generated_per_class", "directions", "release_gate")
    print(json.dumps({k: v for k, v in figures.items() if k not in skip}, indent=1))
    if "release_gate" in figures:
        print(table(figures["release_gate"]))
    return 0


def _push_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "push",
        help="upload a weights folder to the Hugging Face Hub",
        description=(
            "Upload config.json + *.safetensors (+ README.md model card, generated if absent) to a Hub model repo."
        ),
    )
    p.add_argument("--weights", required=True, help="weights folder to upload")
    p.add_argument("--repo", required=True, help="Hub repo id owner/name (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--revision", default=None, help="branch to upload to (default main)")
    p.add_argument("--token", default=None, help="Hub token (default: the one from `hf auth login` / HF_TOKEN)")
    return p


def cmd_push(a: argparse.Namespace) -> int:
    from .hub import push

    print(f"uploaded: {push(a.weights, a.repo, token=a.token, private=a.private, revision=a.revision)}")
    return 0


def _model(a: argparse.Namespace):
    from .hub import resolve_weights

    return resolve_weights(a.weights, a.revision, _device(a.device), fallback=False).model


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _swap_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "swap",
        help="one z rendered as many classes (the paper's category change)",
        description=(
            "Render one latent code as several classes. The code comes from --seed, or from --image (encoded by E "
            "with --source-class, or the class C predicts). Writes a one-row grid PNG."
        ),
    )
    _add_weights(p)
    p.add_argument("--seed", type=int, default=None, help="seed of z (when no --image)")
    p.add_argument("--image", default=None, help="photo to encode instead of a seed")
    p.add_argument("--source-class", default=None, help="class of --image (default: C's prediction)")
    p.add_argument(
        "--classes", default=None, help="comma-separated target classes (names or indices; default: the first 8)"
    )
    p.add_argument("--truncation", type=float, default=1.0, help="scale of z from --seed (default 1)")
    p.add_argument("--out", required=True, help="output PNG path")
    return p


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


def _interpolate_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "interpolate",
        help="morph between two endpoints (GIF or PNG strip)",
        description=(
            "Interpolate between endpoint A and B, each (class, seed) or a photo. z is slerped, the class one-hot "
            "weights are mixed linearly. --out ending in .gif writes an animation, otherwise a PNG strip."
        ),
    )
    _add_weights(p)
    for e in ("a", "b"):
        p.add_argument(f"--class-{e}", default=None, help=f"class of endpoint {e.upper()}")
        p.add_argument(f"--seed-{e}", type=int, default=None, help=f"seed of endpoint {e.upper()}")
        p.add_argument(f"--image-{e}", default=None, help=f"photo for endpoint {e.upper()} (class given or predicted)")
    p.add_argument(
        "--mode", default="both", choices=["z", "class", "both"], help="what changes along the path (default both)"
    )
    p.add_argument("--frames", type=int, default=8, help="number of frames, endpoints included (default 8)")
    p.add_argument("--out", required=True, help="output .gif or .png")
    return p


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


def _directions_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "directions",
        help="compute latent directions (slider axes) and save them with the weights",
        description=(
            "Encode the training images with E, then save the top principal directions of z and one direction per "
            "attr_* column of metadata.csv (ridge regression of the attribute on E's codes) into "
            "WEIGHTS/directions.safetensors + config.json. With --direction-judge the attr_* directions are fitted on "
            "generated samples instead (the judge's estimate of each attribute regressed on z), which follows how G "
            "responds to z; see README, 'Latent directions'. Also re-checks them (directions.jpg, figures.json and the "
            "card's 'Latent directions' section are replaced; the networks are not touched)."
        ),
    )
    p.add_argument("--weights", required=True, help="local weights folder to add the directions to")
    p.add_argument("--data", required=True, help="the training data (folder or .tar) with its metadata.csv")
    p.add_argument("--components", type=int, default=8, help="number of principal directions (default 8)")
    p.add_argument(
        "--direction-judge",
        default=None,
        help="attribute judge folder (`cvaegan judge --attributes`): "
        "fit the attr_* directions on generated samples it scores",
    )
    p.add_argument(
        "--judge-samples", type=int, default=4096, help="generated samples for --direction-judge (default 4096)"
    )
    p.add_argument(
        "--decorrelate",
        action="store_true",
        help="make each attr_* direction orthogonal to the other "
        "attributes' regression weights, so that its slider leaves them unchanged to first order",
    )
    p.add_argument(
        "--attribute-judge",
        default=None,
        help="attribute judge folder that re-measures every direction "
        "for figures.json and the card (best another one than --direction-judge)",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run (default auto)")
    return p


def _refit_parser(sub) -> argparse.ArgumentParser:
    from .refit import EPOCHS, HOLE_P, LR

    p = sub.add_parser(
        "refit-classifier",
        help="refit C alone on the weights' training photos, so that its class guess survives holes",
        description=(
            "Train the weights' classifier C on its own (E, G and D untouched: samples stay the same) on the "
            "training photos the weights recorded, with flips, shifts, zoom, label smoothing and random holes "
            "filled smoothly, then replace classifier.safetensors, C's running feature means, figures.json's C "
            "figures and the card's 'Classifier refit' section in place. Makes the inpainting's \"auto\" class "
            "guess right more often (README, Evaluation). Not in the paper. It breaks enrolment of new classes "
            "(which relies on the trained C's features): do not refit weights you will enrol into."
        ),
    )
    _add_fit_on_weights(p, EPOCHS)
    p.add_argument("--lr", type=float, default=LR, help=f"Adam step size (default {LR:g})")
    p.add_argument(
        "--hole-share", type=float, default=HOLE_P, help=f"share of photos given a random hole (default {HOLE_P:g})"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffling, augmentation and holes (default 0)")
    _add_threads_device(p, "run")
    return p


def _comma_list(text: str, convert, must_be: str, example: str, error: type[Exception]) -> list:
    """The values of a comma-separated option; `error` saying what they `must_be` (with an example) otherwise."""
    try:
        return [convert(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise error(f"{must_be} separated by commas, e.g. {example} (got {text!r})") from e


def _add_weights_in_place(p: argparse.ArgumentParser) -> None:
    """--weights and --data of a command that measures or trains something for a weights folder, in place."""
    p.add_argument("--weights", required=True, help="local weights folder (changed in place; copy it first to keep it)")
    p.add_argument("--data", required=True, help="the data the weights were trained on (folder or .tar)")


def _add_fit_on_weights(p: argparse.ArgumentParser, epochs: int) -> None:
    """--weights, --data and --epochs of a command that trains a network of a weights folder on its own photos."""
    _add_weights_in_place(p)
    p.add_argument("--epochs", type=int, default=epochs, help=f"passes over the training photos (default {epochs})")


def _add_threads_device(p: argparse.ArgumentParser, verb: str) -> None:
    """--threads and --device of a command that trains or runs a network (`verb`: what it does on the device)."""
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help=f"where to {verb} (default auto)")


def cmd_refit(a: argparse.Namespace) -> int:
    import torch

    from .refit import ENROLMENT_WARNING, refit_folder

    if a.threads:
        torch.set_num_threads(a.threads)
    r = refit_folder(a.weights, a.data, a.epochs, a.lr, a.hole_share, a.seed, _device(a.device))
    b, after = r["c_top1_before"], r["c_top1_after"]
    print(
        f"refitted C of {a.weights}: {r['epochs']} epochs, {r['images_seen']:,} images, {r['wall_s'] / 60:.1f} wall "
        f"minutes with {r['threads']} thread(s)"
    )
    if b and after:
        print(
            f"  C's top-1 on {r['held_out_images']} held-out photos: whole {b['whole']:.1%} -> {after['whole']:.1%}, "
            f"25% box filled smoothly {b['box25']:.1%} -> {after['box25']:.1%}"
        )
    else:
        print("  no held-out photos recorded for these weights: C was not measured")
    print(f"warning: {ENROLMENT_WARNING}", file=sys.stderr)
    return 0


def _guesser_parser(sub) -> argparse.ArgumentParser:
    from .guesser import EPOCHS, SEED, WIDTHS

    p = sub.add_parser(
        "fit-guesser",
        help='train a small class guesser for inpainting\'s "auto" mode and add it to a weights folder',
        description=(
            "Train a small classifier (the judge's residual network, narrower) on the training photos the weights "
            "recorded, with flips, shifts, zoom, erasing and random holes filled smoothly, and add it to the folder "
            "as guesser.safetensors (config.json, figures.json and the card's 'Class guesser' section updated in "
            "place). Inpainting without a chosen class then asks it instead of C, which learns the training photos "
            "by heart and rarely names the class of a photo with a hole. E, G, C and D stay as they are, so "
            "samples and enrolment do not change (README, Evaluation). Not in the paper."
        ),
    )
    _add_fit_on_weights(p, EPOCHS)
    p.add_argument(
        "--widths",
        default=",".join(map(str, WIDTHS)),
        help=f"channels of its stages, comma-separated (default {','.join(map(str, WIDTHS))}); narrower is smaller",
    )
    p.add_argument("--seed", type=int, default=SEED, help=f"seed of its weights, shuffling and holes (default {SEED})")
    p.add_argument(
        "--mix-only",
        action="store_true",
        help="do not train: measure again the share of the 'auto' guess the folder's guesser gets against C (the "
        "guess is p_guesser^w * p_C^(1 - w), w chosen on held-out photos after the card's)",
    )
    _add_threads_device(p, "train")
    return p


def _print_mix(r: dict) -> None:
    mix = r.get("mix")
    if not mix:
        print("  too few held-out photos beyond the card's to weigh the guesser against C: it guesses alone")
        return
    views = ", ".join(mix["views"])
    print(f"  the guess p_guesser^w * p_C^(1 - w), top-1 on {mix['photos']} held-out photos ({views}; mean):")
    for w, row in mix["top1"].items():
        print(f"    w = {w:>4}: {row['mean']:.1%}" + ("  <- kept" if float(w) == r["weight"] else ""))


def cmd_guesser(a: argparse.Namespace) -> int:
    import torch

    from .guesser import GuesserError, fit_guesser, measure_mix

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.mix_only:
        r = measure_mix(a.weights, a.data, _device(a.device))
        print(f"measured the class guesser's share of the 'auto' guess in {a.weights}: w = {r['weight']:g}")
        _print_mix(r)
        return 0
    widths = _comma_list(a.widths, int, "--widths must be whole numbers", "24,48,96,192", GuesserError)
    r = fit_guesser(a.weights, a.data, a.epochs, widths, a.seed, _device(a.device))
    print(
        f"added a class guesser to {a.weights}: {r['epochs']} epochs, {r['images_seen']:,} images, "
        f"{r['bytes'] / 2**20:.1f} MiB, {r['wall_s'] / 60:.1f} wall minutes with {r['threads']} thread(s)"
    )
    c, g = r["c_top1"], r["guesser_top1"]
    if c and g:
        print(
            f"  top-1 on {r['held_out_images']} held-out photos, guesser / C: whole {g['whole']:.1%} / {c['whole']:.1%}, "
            f"25% box filled smoothly {g['box25']:.1%} / {c['box25']:.1%}"
        )
        _print_mix(r)
    else:
        print("  no held-out photos recorded for these weights: the guesser was not measured")
    return 0


def _feather_parser(sub) -> argparse.ArgumentParser:
    from .feather import CANDIDATES, TOLERANCE

    p = sub.add_parser(
        "fit-feather",
        help="measure how far from a hole's rim inpainting should trust the model's detail, for a weights folder",
        description=(
            "Inpaint held-out photos (25%% box, thin strokes, free-form brush; the true class) with the model's "
            "detail fading in over each candidate number of model pixels from the hole's rim, score PSNR in the hole "
            "and the judge's top-1 on the results, and keep the best mean PSNR whose mean judge top-1 stays within "
            "the tolerance of the paste without feather. Writes config.json's inpaint_feather (used by the app, "
            "`inpaint` and `evaluate`), figures.json and the card's 'Inpainting feather' section in place. The "
            "held-out photos are the ones after the card's, so the card stays a fair test. Not in the paper."
        ),
    )
    _add_weights_in_place(p)
    p.add_argument("--judge", required=True, help="class judge folder (`cvaegan judge`) trained on the same data")
    p.add_argument(
        "--candidates",
        default=",".join(f"{c:g}" for c in CANDIDATES),
        help=f"feathers to try, in model pixels (default {','.join(f'{c:g}' for c in CANDIDATES)}; 0 is always tried)",
    )
    p.add_argument(
        "--photos", type=int, default=None, help="at most this many held-out photos (default: all after the card's)"
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=TOLERANCE,
        help=f"mean judge top-1 a feather may lose against none (default {TOLERANCE})",
    )
    _add_threads_device(p, "run the networks")
    return p


def cmd_feather(a: argparse.Namespace) -> int:
    import torch

    from .feather import FeatherError, fit_feather

    if a.threads:
        torch.set_num_threads(a.threads)
    candidates = _comma_list(a.candidates, float, "--candidates must be numbers", "0,2,4,8", FeatherError)
    r = fit_feather(a.weights, a.data, a.judge, candidates, a.photos, a.tolerance, device=_device(a.device))
    print(f"measured on {r['held_out_photos']} held-out photos (PSNR in the hole / judge top-1, mean of the 3 masks):")
    for f, res in r["results"].items():
        print(f"  feather {f:>4} px: {res['mean_psnr_db']:.2f} dB / {res['mean_judge_top1']:.1%}")
    print(f"wrote inpaint_feather = {r['chosen_px']:g} into {a.weights} ({r['wall_s'] / 60:.1f} wall minutes)")
    return 0


def cmd_directions(a: argparse.Namespace) -> int:
    from .release import refresh_directions

    figures = refresh_directions(
        a.weights,
        a.data,
        a.components,
        a.attribute_judge,
        a.direction_judge,
        a.decorrelate,
        _device(a.device),
        a.judge_samples,
    )
    names = list(figures["directions"])
    print(
        f"saved {len(names)} directions to {a.weights}: {', '.join(names)} (checked in directions.jpg, "
        "figures.json and the card's 'Latent directions' section)"
    )
    for name, f in figures["direction_fits"].items():
        print(
            f"  {name}: fitted on {f['source']} (n={f['n']}, R^2 of the linear fit {f['r2']:.2f}"
            f"{', decorrelated' if f['decorrelated'] else ''})"
        )
    for name, r in figures["directions"].items():
        if "per_unit" in r:
            print(f"  {name}: re-measured {r['per_unit']:.2f} SD per slider unit (1 = as intended)")
    return 0


def _class_note(model, idx: int, prob) -> str:
    name = model.config.class_names[idx]
    return f"class {name!r}" + (f" (predicted by C, p={prob:.2f})" if prob is not None else "")


def _reconstruct_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "reconstruct",
        help="photo -> E -> G",
        description=("Encode a photo with E and regenerate it with G at the model resolution; prints the class used."),
    )
    _add_weights(p)
    p.add_argument("--image", required=True, help="input photo (any size or mode)")
    p.add_argument("--class", dest="cls", default=None, help="class of the photo (default: C's prediction)")
    p.add_argument("--out", required=True, help="output PNG path")
    p.add_argument(
        "--refine-steps",
        type=int,
        default=0,
        help="then optimise E's code on the photo's pixels for this many steps: a closer likeness, a code further "
        "from the prior (default 0: the paper's E -> G)",
    )
    return p


def cmd_reconstruct(a: argparse.Namespace) -> int:
    from .images import psnr, save_png, to_pil
    from .inference import as_model_input, reconstruct

    if a.refine_steps < 0:
        raise InputError(f"--refine-steps must be 0 or more, got {a.refine_steps}")
    model = _model(a)
    x_in = as_model_input(model, a.image)  # decoded once: reconstructed and compared
    x, idx, prob = reconstruct(model, x_in, a.cls, a.refine_steps)
    save_png(to_pil(x), a.out)
    db = float(psnr(x[None], x_in.cpu())[0])
    print(f"wrote {a.out}; {_class_note(model, idx, prob)}; PSNR against the photo at model resolution {db:.2f} dB")
    return 0


def _inpaint_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "inpaint",
        help="fill the masked part of a photo",
        description=(
            "The paper's iterative inpainting: encode, generate, paste the known pixels back, K times; optional "
            "refinement of z. Mask: any image, non-zero (or alpha > 0) = missing. Known pixels are kept exactly."
        ),
    )
    _add_weights(p)
    p.add_argument("--image", required=True, help="input photo (any size or mode)")
    p.add_argument("--mask", required=True, help="mask image (white/opaque = fill in)")
    p.add_argument("--class", dest="cls", default=None, help="class of the photo (default: C's prediction)")
    p.add_argument("--iterations", type=int, default=4, help="encode-generate-paste rounds (default 4)")
    p.add_argument(
        "--refine-steps", type=int, default=0, help="extra steps optimising z on the known pixels (default 0)"
    )
    p.add_argument("--no-blend", action="store_true", help="do not colour-match the fill to its border")
    p.add_argument(
        "--feather",
        type=float,
        default=None,
        help="model pixels over which the generated detail fades in from the hole's rim (default: the weights' own, "
        "set by `cvaegan fit-feather`; 0 pastes it everywhere). Not with --no-blend",
    )
    p.add_argument("--out", required=True, help="output image at the input's size")
    return p


def cmd_inpaint(a: argparse.Namespace) -> int:
    from .inference import inpaint

    if a.feather is not None and a.no_blend:
        raise InputError("--feather shapes the seamless paste, which --no-blend skips: drop one of them")
    if a.feather is not None and not 0 <= a.feather <= 64:
        raise InputError(f"--feather must be 0 to 64 model pixels, got {a.feather}")
    model = _model(a)
    r = inpaint(model, a.image, a.mask, a.cls, a.iterations, a.refine_steps, blend=not a.no_blend, feather=a.feather)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    r["image"].save(a.out)
    note = (
        "the mask is empty: nothing to fill" if r["class"] is None else _class_note(model, r["class"], r["probability"])
    )
    print(f"wrote {a.out}; {note}")
    return 0


def _superres_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "superres",
        help="super-resolve a small photo by projecting onto G",
        description=(
            "Upsample a photo smaller than the model resolution: start from E's code of the bicubic upsample and "
            "optimise z so the downsampled output matches the input. Prints the PSNR against the input."
        ),
    )
    _add_weights(p)
    p.add_argument("--image", required=True, help="small input photo (e.g. 16 or 32 px)")
    p.add_argument("--class", dest="cls", default=None, help="class of the photo (default: C's prediction)")
    p.add_argument("--steps", type=int, default=100, help="optimisation steps (default 100)")
    p.add_argument("--out", required=True, help="output PNG at model resolution")
    return p


def cmd_superres(a: argparse.Namespace) -> int:
    from .images import save_png
    from .inference import superresolve

    model = _model(a)
    r = superresolve(model, a.image, a.cls, a.steps)
    save_png(r["image"], a.out)
    print(
        f"wrote {a.out}; PSNR of the downsampled result vs the input: {r['psnr']:.2f} dB; "
        f"{_class_note(model, r['class'], r['probability'])}"
    )
    return 0


def _augment_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "augment",
        help="write an ImageFolder of generated images for data augmentation",
        description=(
            "Generate N images per class into OUT/<class_folder>/<seed>.png and record every seed in OUT/seeds.csv."
        ),
    )
    _add_weights(p)
    p.add_argument("--per-class", type=int, required=True, help="images per class")
    p.add_argument("--classes", default=None, help="comma-separated classes (default: all)")
    p.add_argument("--first-seed", type=int, default=0, help="seed of the first image (default 0)")
    p.add_argument("--truncation", type=float, default=1.0, help="scale of z (default 1)")
    p.add_argument("--out", required=True, help="output folder")
    return p


def cmd_augment(a: argparse.Namespace) -> int:
    from .inference import augment

    model = _model(a)
    out = augment(model, a.out, a.per_class, a.first_seed, _split(a.classes), a.truncation)
    print(f"wrote {out} (seeds in {out / 'seeds.csv'})")
    return 0


def _judge_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "judge",
        help="train an independent classifier (the evaluation's judge) on real images",
        description=(
            "Train a judge (residual net, GroupNorm, augmentation, its own seed; different from the model's C) on the 90%% "
            "training split of DATA (per class, the same split as `train --val-fraction 0.1`) and report its top-1 on "
            "the held-out 10%%. Writes OUT/config.json + OUT/judge.safetensors."
        ),
    )
    p.add_argument("--data", required=True, help="folder or .tar in ImageFolder layout")
    p.add_argument("--out", required=True, help="judge folder to write")
    p.add_argument("--resolution", type=int, default=64, help="input side in pixels (default 64)")
    p.add_argument("--epochs", type=int, default=20, help="passes over the training split (default 20)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step (default 64)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate, one-cycle schedule (default 2e-3)")
    p.add_argument("--seed", type=int, default=7, help="judge seed (default 7; the generator's default is 0)")
    p.add_argument(
        "--stem-stride",
        type=int,
        default=2,
        choices=[1, 2],
        help="2 (default) halves the input in the "
        "first layer; 1 keeps the full resolution in the first block (about 4x the compute)",
    )
    p.add_argument("--widths", default="32,64,128,256", help="channels of the residual stages (default 32,64,128,256)")
    p.add_argument(
        "--augment",
        choices=("standard", "strong"),
        default="standard",
        help="standard: flips, shifts, colour jitter; strong adds a random zoom and random erasing, for data "
        "with few photos per class (default standard)",
    )
    p.add_argument(
        "--extra", default=None, help="extra labelled images to train on too (e.g. `cvaegan augment` output)"
    )
    p.add_argument(
        "--attributes",
        action="store_true",
        help="train an attribute judge instead: regress the attr_* "
        "columns of metadata.csv (reports R^2 per attribute); `release --attribute-judge` uses it to "
        "re-measure the named latent directions",
    )
    _add_threads_device(p, "train")
    return p


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
    cfg = train_judge(
        data,
        a.out,
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
        seed=a.seed,
        extra=extra,
        device=_device(a.device),
        attributes=a.attributes,
        stem_stride=a.stem_stride,
        augment=a.augment,
        widths=[int(w) for w in a.widths.split(",")],
    )
    t = cfg.training
    if a.attributes:
        r2 = ", ".join(f"{k} {v:.3f}" for k, v in t["val_r2"].items())
        print(f"attribute judge R^2 on {t['val_images']} held-out images: {r2}; wrote {a.out}")
        return 0
    print(
        f"judge top-1 on {t['val_images']} held-out images: {t['val_top1']:.4f} (chance {1 / cfg.num_classes:.4f}); "
        f"wrote {a.out}"
    )
    return 0


def _evaluate_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "evaluate",
        help="measure weights with a judge: discriminability, FID/KID/IS (judge space), "
        "diversity, reconstruction, inpainting vs baselines",
        description=(
            "Write a JSON report: the judge's top-1 on generated samples of each class and on held-out real images, "
            "inception score / FID / KID / precision-recall-density-coverage in the judge's feature space (not "
            "comparable to Inception-based values), 1 - MS-SSIM intra-class diversity, E->G reconstruction PSNR/SSIM, "
            "and inpainting as the app does it (PSNR/SSIM inside the hole and the judge's top-1 on the inpainted photos) "
            "for a 25%% box (eyes and nose on faces), thin strokes and thick brush strokes, against OpenCV Telea, "
            "Navier-Stokes and a mean-colour fill; prints ours vs Telea as a markdown table. Held-out images: the "
            "per-class 10%% split of `train --val-fraction 0.1`."
        ),
    )
    _add_weights(p)
    p.add_argument("--judge", required=True, help="judge folder from `cvaegan judge`")
    p.add_argument("--data", required=True, help="the data set the weights were trained on")
    p.add_argument("--out", required=True, help="report .json to write")
    p.add_argument("--samples-per-class", type=int, default=8, help="generated images per class (default 8)")
    p.add_argument("--classes", default=None, help="comma-separated classes to generate (default: all)")
    p.add_argument(
        "--inpaint-images", type=int, default=64, help="held-out images for the inpainting figures (default 64)"
    )
    p.add_argument(
        "--inpaint-iterations",
        type=int,
        default=None,
        help="encode-generate-paste rounds for ours (default: the app's default, 4)",
    )
    p.add_argument(
        "--inpaint-feather",
        type=float,
        default=None,
        help="model pixels over which the generated detail fades in from the hole's rim (default: the weights' own, "
        "set by `cvaegan fit-feather`; 0 pastes it everywhere)",
    )
    p.add_argument(
        "--box",
        choices=("faces", "centre"),
        default=None,
        help="where the 25%% box goes: faces (brows, eyes, nose) or centre (default: faces when every class folder "
        "is a CelebA / LFW id, else centre)",
    )
    p.add_argument(
        "--truncation",
        type=float,
        default=1.0,
        help="scale of the samples' z, as the app's slider (default 1: z ~ N(0, I), the paper's prior and every "
        "published figure's); lower gives more typical, less varied samples. Not with --card",
    )
    p.add_argument(
        "--card",
        action="store_true",
        help="also write evaluation.json, the judge's figures and the release targets into the weights folder's "
        "model card (README.md)",
    )
    p.add_argument(
        "--fid-baseline",
        type=float,
        default=None,
        help="with --card: the judge-space FID of the weights the release targets count from (target: at most "
        "half of it); without it the card's FID target row says no baseline was given",
    )
    p.add_argument(
        "--recon-refine-steps",
        type=int,
        default=None,
        help="also report the reconstruction after this many steps of z refinement per photo (the app's "
        "Reconstruct slider; default evaluate.RECON_REFINE_STEPS = 50; 0: skip). The target counts E -> G alone",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    return p


def cmd_evaluate(a: argparse.Namespace) -> int:
    import torch

    from .data import load_images
    from .evaluate import check_truncation, evaluate, write_report
    from .judge import load_judge

    if a.fid_baseline is not None and not a.card:
        raise InputError("--fid-baseline only goes into the model card: add --card")
    if a.fid_baseline is not None and not a.fid_baseline > 0:
        raise InputError(f"--fid-baseline must be a positive FID, got {a.fid_baseline}")
    if a.card and a.truncation != 1.0:
        raise InputError("the model card's figures use z ~ N(0, I): drop --truncation, or drop --card")
    check_truncation(a.truncation)
    if a.threads:
        torch.set_num_threads(a.threads)
    model = _model(a)
    judge = load_judge(a.judge, device=model.device)
    data = load_images(a.data, model.config.resolution)
    classes = None
    if a.classes:
        from .inference import class_indices

        classes = class_indices(model, _split(a.classes))
    if a.inpaint_iterations is not None and a.inpaint_iterations < 1:
        raise InputError(f"--inpaint-iterations must be at least 1, got {a.inpaint_iterations}")
    report = evaluate(
        model,
        judge,
        data,
        a.samples_per_class,
        classes,
        a.inpaint_images,
        inpaint_iterations=a.inpaint_iterations,
        box=a.box,
        truncation=a.truncation,
        inpaint_feather=a.inpaint_feather,
        **({} if a.recon_refine_steps is None else {"recon_refine_steps": a.recon_refine_steps}),
    )
    write_report(report, a.out)
    if a.card:
        import dataclasses

        from .card import attach_judge

        if not a.weights or not Path(a.weights).is_dir():
            raise InputError("--card needs --weights to be a local weights folder")
        attach_judge(a.weights, report, dataclasses.asdict(judge.config), fid_baseline=a.fid_baseline)
    d = report["discriminability"]
    print(
        f"judge top-1: generated {d['judge_top1_generated']:.4f}, held-out real {d['judge_top1_real_val']:.4f} "
        f"(chance {report['chance_top1']:.4f}); FID(judge) {report['fid_judge']:.3f}; "
        f"reconstruction {report['reconstruction']['psnr_db']:.2f} dB{_refined_note(report)}; wrote {a.out}"
    )
    if "box25" in report.get("inpainting", {}):
        from .evaluate import inpainting_table

        print(inpainting_table(report["inpainting"]), end="")
    return 0


def _refined_note(report: dict) -> str:
    r = report["reconstruction"].get("refined")
    return f" ({r['psnr_db']:.2f} dB with {r['steps']} steps of z refinement)" if r else ""


def add_lambdas_option(p: argparse.ArgumentParser) -> None:
    """--lambdas and --layer-lr of `cvaegan enrol` and `python -m cvaegan.experiments enrolment` (the loss weights
    are checked by enrol.check_lambdas)."""
    from .enrol import DEFAULT_LAMBDAS

    p.add_argument(
        "--lambdas",
        default=",".join(f"{x:g}" for x in DEFAULT_LAMBDAS),
        help="loss weights l1-l4 of KL, L_G, L_GD, L_GC (default 3,1,0.001,10: the paper's training weights except a "
        "heavier l4, which pushes samples of the new class towards C's features of the photos; 3,1,0.001,0.001 is "
        "the paper's)",
    )
    from .enrol import LAYER_LR

    p.add_argument(
        "--layer-lr",
        type=float,
        default=LAYER_LR,
        help=f"step size of the new class's own terms in each of G's class-conditional BatchNorms (default "
        f"{LAYER_LR:g}; 0 learns only the label embeddings, as before; weights without class BatchNorm ignore it)",
    )


def _enrol_parser(sub) -> argparse.ArgumentParser:
    from .enrol import DEFAULT_STEPS

    p = sub.add_parser(
        "enrol",
        help="add a new class (a person, a species) from a few photos",
        description=(
            "Learn a new class from 3-10 photos without changing the weights: only its label embeddings for G and E, "
            "its terms in G's class-conditional BatchNorms and its row of C's output layer are learned (from the "
            "nearest existing class). Writes them to a small "
            "class file --out; load it with cvaegan.hub.load_pretrained(WEIGHTS, extra_classes=[FILE]). Photos are "
            "centre-cropped and resized like the training data: frame them the same way (faces: aligned like "
            "CelebA's img_align_celeba, eyes level, face centred)."
        ),
    )
    _add_weights(p)
    p.add_argument(
        "--images",
        required=True,
        nargs="+",
        metavar="PATH",
        help="a folder of photos, or the photo files (at least 3, 5-10 recommended)",
    )
    p.add_argument("--name", required=True, help="display name of the new class (must not exist yet)")
    p.add_argument(
        "--out",
        required=True,
        help="class file to write, e.g. ada.safetensors (keep it out of a "
        "weights folder you push: `push` uploads every .safetensors)",
    )
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"optimisation steps (default {DEFAULT_STEPS})")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise and the mirroring (default 0)")
    add_lambdas_option(p)
    p.add_argument(
        "--preview", default=None, metavar="PNG", help="also write a sheet: the photos above samples of the new class"
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    return p


def cmd_enrol(a: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from .enrol import add_classes, before_after, check_lambdas, check_layer_lr, enrol, load_photos, save_classes
    from .hub import load_pretrained
    from .images import save_png

    check_lambdas(a.lambdas)  # before the weights load: a typo fails at once
    check_layer_lr(a.layer_lr, "--layer-lr")
    if a.threads:
        torch.set_num_threads(a.threads)
    images = a.images[0] if len(a.images) == 1 and Path(a.images[0]).is_dir() else a.images
    if a.weights and (Path(a.weights) / "discriminator.safetensors").is_file():  # D's features help when present
        model = load_pretrained(a.weights, device=_device(a.device), with_discriminator=True)
    else:
        model = _model(a)
    with tqdm(total=a.steps, desc="enrol", dynamic_ncols=True) as bar:
        cls = enrol(
            model,
            images,
            a.name,
            steps=a.steps,
            seed=a.seed,
            lambdas=a.lambdas,
            layer_lr=a.layer_lr,
            progress=lambda f, msg: (bar.update(1), bar.set_postfix_str(msg.split(": ", 1)[-1])),
        )
    save_classes(cls, a.out)
    for w in cls.warnings:
        print(f"warning: {w}", file=sys.stderr)
    i = cls.info
    print(
        f"enrolled {cls.name!r} from {i['photos']} photos in {i['seconds']:.1f} s (started from {i['init_from']!r}); "
        f"reconstruction {i['recon_psnr_db_before']:.2f} -> {i['recon_psnr_db_after']:.2f} dB; C picks it for "
        f"{i['c_top1_photos']:.0%} of the photos and {i['c_top1_samples']:.0%} of 16 samples; wrote {a.out}"
    )
    if a.preview:
        add_classes(model, cls)
        save_png(before_after(model, load_photos(images, model.config.resolution), cls.name), a.preview)
        print(f"wrote {a.preview}")
    return 0


# command name -> (parser builder, command); the order is the one `--help` lists
COMMANDS = {
    "train": (_train_parser, cmd_train),
    "export": (_export_parser, cmd_export),
    "release": (_release_parser, cmd_release),
    "push": (_push_parser, cmd_push),
    "sample": (_sample_parser, cmd_sample),
    "swap": (_swap_parser, cmd_swap),
    "interpolate": (_interpolate_parser, cmd_interpolate),
    "directions": (_directions_parser, cmd_directions),
    "refit-classifier": (_refit_parser, cmd_refit),
    "fit-guesser": (_guesser_parser, cmd_guesser),
    "fit-feather": (_feather_parser, cmd_feather),
    "reconstruct": (_reconstruct_parser, cmd_reconstruct),
    "inpaint": (_inpaint_parser, cmd_inpaint),
    "superres": (_superres_parser, cmd_superres),
    "augment": (_augment_parser, cmd_augment),
    "enrol": (_enrol_parser, cmd_enrol),
    "judge": (_judge_parser, cmd_judge),
    "evaluate": (_evaluate_parser, cmd_evaluate),
}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="cvaegan", description="CVAE-GAN: train, export and sample fine-grained image generators."
    )
    ap.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for build, _ in COMMANDS.values():
        build(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command][1](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (CVAEGANError, OSError) as e:  # ours, or the OS's (paths, permissions): one line unless --debug
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
