"""Reproducible experiments, each end to end for one data set (judge, training runs, evaluation, table):

    python -m cvaegan.experiments table1       --data DATA --out DIR   # the paper's Table 1 ablation
    python -m cvaegan.experiments diffaugment  --data DATA --out DIR   # D's input augmentation on / off
    python -m cvaegan.experiments augmentation --data DATA --out DIR   # judge on real vs real + generated [--equal-steps]

Every step is skipped when its result already exists in DIR, so a killed experiment is resumed by
running the same command again (training runs resume from their checkpoints). Training runs are
`python -m cvaegan train` subprocesses, `--parallel` of them at once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw

from .cli import add_lambdas_option
from .errors import CVAEGANError, InputError

# Table 1 of Bao et al. (ICCV 2017): FaceScrub, 530 identities; a classifier trained on the data set.
PAPER_TABLE1 = {
    "real data": {"discriminability": 0.9961, "inception_score": 20.85},
    "cvae": {"discriminability": 0.0809, "inception_score": 10.29},
    "cgan": {"discriminability": 0.6197, "inception_score": 15.79},
    "fm-cgan": {"discriminability": 0.7976, "inception_score": 19.40},
    "cvae-gan": {"discriminability": 0.9778, "inception_score": 19.03},
}
LABELS = {"real data": "real data", "cvae": "CVAE", "cgan": "CGAN", "fm-cgan": "FM-CGAN", "cvae-gan": "CVAE-GAN"}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def ensure_judge(
    data: str, out: Path, resolution: int, epochs: int, threads: int | None, extra: Path | None = None
) -> Path:
    """Train `cvaegan judge` into `out` unless a judge is already there; `extra` adds a folder of generated
    images to its training set (`judge --extra`)."""
    if (out / "config.json").is_file():
        _log(f"judge: reusing {out}")
        return out
    _log(f"judge: training on {data}{f' + {extra}' if extra else ''} ({epochs} epochs)")
    cmd = [
        sys.executable,
        "-m",
        "cvaegan",
        "judge",
        "--data",
        data,
        "--out",
        str(out),
        "--resolution",
        str(resolution),
        "--epochs",
        str(epochs),
    ]
    cmd += ["--extra", str(extra)] if extra else []
    cmd += ["--threads", str(threads)] if threads else []
    subprocess.run(cmd, check=True)
    return out


def run_trainings(jobs: dict[str, list[str]], runs: Path, parallel: int) -> None:
    """jobs: run name -> extra `cvaegan train` arguments. Runs whose export/ exists are skipped."""
    pending = [(name, args) for name, args in jobs.items() if not (runs / name / "export" / "config.json").is_file()]
    active: list[tuple[str, subprocess.Popen]] = []
    while pending or active:
        while pending and len(active) < parallel:
            name, args = pending.pop(0)
            folder = runs / name
            resume = ["--resume"] if (folder / "checkpoint.pt").is_file() else []
            cmd = [sys.executable, "-m", "cvaegan", "train", "--out", str(folder), *args, *resume]
            _log(f"train {name}: {' '.join(cmd[3:])}")
            folder.parent.mkdir(parents=True, exist_ok=True)
            log = open(runs / f"{name}.log", "a")
            active.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)))
        time.sleep(2)
        for name, proc in list(active):
            if proc.poll() is not None:
                active.remove((name, proc))
                if proc.returncode != 0:
                    raise CVAEGANError(f"training {name} failed (exit {proc.returncode}); see {runs / (name + '.log')}")
                _log(f"train {name}: done")


def evaluate_run(
    export: Path, judge: Path, data: str, report: Path, samples_per_class: int, inpaint_images: int
) -> dict:
    if report.is_file():
        return json.loads(report.read_text())
    _log(f"evaluate {export}")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "cvaegan",
            "evaluate",
            "--weights",
            str(export),
            "--judge",
            str(judge),
            "--data",
            data,
            "--out",
            str(report),
            "--samples-per-class",
            str(samples_per_class),
            "--inpaint-images",
            str(inpaint_images),
            "--device",
            "cpu",
        ],
        check=True,
    )
    return json.loads(report.read_text())


def _train_args(a: argparse.Namespace) -> list[str]:
    args = [
        "--data",
        a.data,
        "--resolution",
        str(a.resolution),
        "--steps",
        str(a.steps),
        "--batch-size",
        str(a.batch_size),
        "--val-fraction",
        "0.1",
        "--seed",
        str(a.seed),
        "--log-every",
        "25",
        "--sample-every",
        str(max(1, a.steps // 4)),
        "--checkpoint-every",
        str(max(1, a.steps // 8)),
        "--device",
        "auto",
    ]
    if a.base_channels:
        args += ["--base-channels", str(a.base_channels)]
    if a.ema_decay:
        args += ["--ema-decay", str(a.ema_decay)]
    if a.threads:
        args += ["--threads", str(a.threads)]
    return args


def bar_chart(rows: list[tuple[str, float, float | None]], title: str, out: Path) -> None:
    """Grouped horizontal bars (ours, paper) in [0, 1], drawn with PIL (no plotting dependency)."""
    w, row_h, left = 640, 44, 110
    img = Image.new("RGB", (w, 50 + row_h * len(rows) + 30), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 10), title, fill="black")
    span = w - left - 70
    for i, (label, ours, paper) in enumerate(rows):
        y = 40 + i * row_h
        d.text((10, y + 10), label, fill="black")
        for j, (val, colour) in enumerate(((ours, (200, 60, 40)), (paper, (120, 120, 120)))):
            if val is None:
                continue
            yy = y + j * 18
            d.rectangle([left, yy, left + max(1, int(span * val)), yy + 14], fill=colour)
            d.text((left + int(span * val) + 6, yy + 2), f"{100 * val:.1f}%", fill="black")
    y = 45 + row_h * len(rows)
    d.rectangle([left, y, left + 12, y + 10], fill=(200, 60, 40))
    d.text((left + 18, y), "ours (this data set, judge top-1 on samples)", fill="black")
    d.rectangle([left + 320, y, left + 332, y + 10], fill=(120, 120, 120))
    d.text((left + 338, y), "paper (FaceScrub)", fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)


def table1(a: argparse.Namespace) -> dict:
    out = Path(a.out)
    judge = ensure_judge(a.data, out / "judge", a.judge_resolution or a.resolution, a.judge_epochs, a.threads)
    base = _train_args(a)
    variants = ["cvae", "cgan", "fm-cgan", "cvae-gan"]
    run_trainings({v: base + ["--variant", v] for v in variants}, out / "runs", a.parallel)
    reports = {
        v: evaluate_run(
            out / "runs" / v / "export", judge, a.data, out / f"report_{v}.json", a.samples_per_class, a.inpaint_images
        )
        for v in variants
    }
    real = reports["cvae-gan"]
    rows = {
        "real data": {
            "discriminability": real["discriminability"]["judge_top1_real_val"],
            "inception_score": real["inception_score_judge"]["real_val"]["mean"],
            "diversity": real["intra_class_diversity"]["real_val"],
        }
    }
    for v in variants:
        r = reports[v]
        rows[v] = {
            "discriminability": r["discriminability"]["judge_top1_generated"],
            "inception_score": r["inception_score_judge"]["generated"]["mean"],
            "fid_judge": r["fid_judge"],
            "diversity": r["intra_class_diversity"]["generated"],
        }
    result = {
        "data": a.data,
        "classes": real["classes"],
        "resolution": a.resolution,
        "steps": a.steps,
        "batch_size": a.batch_size,
        "seed": a.seed,
        "samples_per_class": a.samples_per_class,
        "judge_val_top1": real["discriminability"]["judge_top1_real_val"],
        "rows": rows,
        "paper": PAPER_TABLE1,
    }
    (out / "table1.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "table1.md").write_text(table1_markdown(result))
    bar_chart(
        [(LABELS[k], v["discriminability"], PAPER_TABLE1[k]["discriminability"]) for k, v in rows.items()],
        f"Discriminability: {real['classes']} classes, {a.resolution} px, {a.steps} steps",
        out / "table1.png",
    )
    _log(f"wrote {out / 'table1.md'} and {out / 'table1.png'}")
    return result


def table1_markdown(r: dict) -> str:
    lines = [
        "| method | discriminability (ours) | IS, judge (ours) | FID, judge (ours) | diversity (ours) "
        "| discriminability (paper) | IS (paper) |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, v in r["rows"].items():
        p = r["paper"][k]
        fid = f"{v['fid_judge']:.2f}" if "fid_judge" in v else "-"
        div = f"{v['diversity']:.3f}" if "diversity" in v else ""
        lines.append(
            f"| {LABELS[k]} | {100 * v['discriminability']:.2f}% | {v['inception_score']:.2f} | {fid} | {div} "
            f"| {100 * p['discriminability']:.2f}% | {p['inception_score']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def diffaugment(a: argparse.Namespace) -> dict:
    """Same run with and without DiffAugment on D's inputs; D's accuracy on training vs held-out real
    images (memorisation) over time, and the judge's figures at the end."""
    out = Path(a.out)
    judge = ensure_judge(a.data, out / "judge", a.judge_resolution or a.resolution, a.judge_epochs, a.threads)
    base = _train_args(a)
    arms = {"plain": base, "diffaugment": base + ["--diffaugment", a.policy]}
    run_trainings(arms, out / "runs", a.parallel)
    result = {"data": a.data, "policy": a.policy, "resolution": a.resolution, "steps": a.steps, "arms": {}}
    for name in arms:
        rows = [json.loads(x) for x in (out / "runs" / name / "metrics.jsonl").read_text().splitlines() if x.strip()]
        probe = [r for r in rows if "acc/D_val_eval" in r]
        last = probe[-max(1, len(probe) // 4) :]  # the final quarter of the run
        rep = evaluate_run(
            out / "runs" / name / "export",
            judge,
            a.data,
            out / f"report_{name}.json",
            a.samples_per_class,
            a.inpaint_images,
        )
        result["arms"][name] = {
            "d_acc_train_real_eval": round(sum(r["acc/D_train_eval"] for r in last) / len(last), 4),
            "d_acc_val_real_eval": round(sum(r["acc/D_val_eval"] for r in last) / len(last), 4),
            "judge_top1_generated": rep["discriminability"]["judge_top1_generated"],
            "fid_judge": rep["fid_judge"],
            "recon_psnr_db": rep["reconstruction"]["psnr_db"],
            "diversity": rep["intra_class_diversity"]["generated"],
        }
        arm = result["arms"][name]
        arm["d_memorisation_gap"] = round(arm["d_acc_train_real_eval"] - arm["d_acc_val_real_eval"], 4)
    (out / "diffaugment.json").write_text(json.dumps(result, indent=2) + "\n")
    _log(json.dumps(result["arms"], indent=1))
    return result


def equal_step_epochs(epochs: int, real_images: int, extra_images: int) -> int:
    """Epochs over the real photos alone that take as many optimisation steps as `epochs` over the real plus
    `extra_images` generated ones (the same batch size), rounded up."""
    return math.ceil(epochs * (real_images + extra_images) / real_images)


def augmentation(a: argparse.Namespace) -> dict:
    """The paper's data-augmentation application: a judge trained on real images vs one trained on
    real + generated images (`cvaegan augment` of --weights), both scored on the held-out real split."""
    out = Path(a.out)
    res = a.judge_resolution or a.resolution
    ensure_judge(a.data, out / "judge_real", res, a.judge_epochs, a.threads)
    gen_dir = out / "generated"
    if not (gen_dir / "seeds.csv").is_file():
        _log(f"augment: {a.per_class} generated images per class from {a.weights}")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "cvaegan",
                "augment",
                "--weights",
                a.weights,
                "--per-class",
                str(a.per_class),
                "--first-seed",
                "50000",
                "--out",
                str(gen_dir),
                "--device",
                "cpu",
            ],
            check=True,
        )
    ensure_judge(a.data, out / "judge_real_plus_generated", res, a.judge_epochs, a.threads, extra=gen_dir)
    from .judge import Judge  # its config reader names a missing or broken config.json

    def trained(name: str) -> dict:
        return Judge.read_config(out / name).training

    top = {name: trained(name) for name in ("judge_real", "judge_real_plus_generated")}
    if a.equal_steps:
        # the control: real photos only, for as many optimisation steps as the judge that also saw the generated ones
        t = top["judge_real_plus_generated"]  # its train_images count both kinds
        epochs = equal_step_epochs(a.judge_epochs, t["train_images"] - t["extra_images"], t["extra_images"])
        ensure_judge(a.data, out / "judge_real_equal_steps", res, epochs, a.threads)
        top["judge_real_equal_steps"] = trained("judge_real_equal_steps")
    result = {
        "data": a.data,
        "weights": a.weights,
        "generated_per_class": a.per_class,
        "top1_real_only": top["judge_real"]["val_top1"],
        "top1_real_plus_generated": top["judge_real_plus_generated"]["val_top1"],
        "val_images": top["judge_real"]["val_images"],
        "epochs": a.judge_epochs,
        "paper": "LFW verification 91.87% -> 92.98% with generated faces added (Bao et al. 2017, Sec. 5)",
    }
    if a.equal_steps:
        result["top1_real_only_equal_steps"] = top["judge_real_equal_steps"]["val_top1"]
        result["equal_steps_epochs"] = top["judge_real_equal_steps"]["epochs"]
    (out / "augmentation.json").write_text(json.dumps(result, indent=2) + "\n")
    _log(json.dumps(result, indent=1))
    return result


def write_readme_section(readme: Path, tag: str, text: str) -> None:
    """Replace the text between <!-- TAG:start --> and <!-- TAG:end --> in README."""
    from .card import put_marked_block

    s = readme.read_text(encoding="utf-8")
    if f"<!-- {tag}:start -->" not in s or f"<!-- {tag}:end -->" not in s:
        raise InputError(f"{readme} has no <!-- {tag}:start --> / <!-- {tag}:end --> markers")
    readme.write_text(put_marked_block(s, tag, text), encoding="utf-8")


def _budget_parser(sub) -> None:
    from .budget import RECIPES

    p = sub.add_parser(
        "budget",
        help="train a recipe for a fixed CPU time and judge it at 15/30/60/120 minutes",
        description=(
            "Equal-budget recipe comparison (see cvaegan/budget.py). Re-run to resume; every "
            "recipe in --out appears in budget.md / budget.png."
        ),
    )
    p.add_argument("--data", required=True, help="folder or .tar in ImageFolder layout")
    p.add_argument(
        "--recipe", required=True, help=f"named recipe: {', '.join(RECIPES)} (or any name with --train-args)"
    )
    p.add_argument("--minutes", type=float, required=True, help="CPU-minutes of training (process CPU time / threads)")
    p.add_argument("--out", required=True, help="experiment folder; the run goes to OUT/<recipe or --name>")
    p.add_argument("--judge", required=True, help="judge folder (`cvaegan judge`), trained on the same data")
    p.add_argument("--threads", type=int, default=2, help="torch threads for training and judging (default 2)")
    p.add_argument("--samples-per-class", type=int, default=10, help="generated images per class (default 10)")
    p.add_argument("--train-args", default="", help="extra `train` options on top of the recipe, e.g. '--stratify 4'")
    p.add_argument("--name", default=None, help="run folder name (default: the recipe)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument("--train-only", action="store_true", help="train, but judge later (another run of the command)")
    p.add_argument("--write-readme", action="store_true", help="put the table into README.md (budget markers)")


def _enrolment_parser(sub) -> None:
    from .enrol import DEFAULT_STEPS

    p = sub.add_parser(
        "enrolment",
        help="enrol classes left out of training and judge them against the trained classes",
        description=(
            "Enrolment measured on classes the model never saw (see cvaegan/enrol_eval.py). Re-run to resume: "
            "finished classes are not enrolled again. Classes are matched between weights, judge and data by "
            "class folder name."
        ),
    )
    p.add_argument("--weights", required=True, help="weights trained with --exclude-classes (a run's export/)")
    p.add_argument("--data", required=True, help="the folder or .tar the weights were trained on (all classes)")
    p.add_argument("--judge", required=True, help="judge folder (`cvaegan judge`) trained on every class of --data")
    p.add_argument("--out", required=True, help="experiment folder (re-run to resume)")
    p.add_argument(
        "--classes",
        default=None,
        help="comma-separated class folders to enrol (default: the run's recorded --exclude-classes)",
    )
    p.add_argument("--photos", type=int, default=5, help="photos enrolled per class, a seeded pick (default 5)")
    p.add_argument("--samples", type=int, default=50, help="samples judged per class (default 50)")
    p.add_argument("--trained-classes", type=int, default=8, help="trained classes for reference (default 8)")
    p.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        help=f"enrolment steps (default {DEFAULT_STEPS}, as `cvaegan enrol`)",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the picks and enrolment (default 0)")
    add_lambdas_option(p)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--write-readme",
        action="store_true",
        help="put enrolment.md into README.md (enrol markers) with a JPEG copy of the sheet in docs/",
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m cvaegan.experiments", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="experiment", required=True)
    for name in ("table1", "diffaugment", "augmentation"):
        p = sub.add_parser(name)
        p.add_argument("--data", required=True, help="folder or .tar in ImageFolder layout")
        p.add_argument("--out", required=True, help="experiment folder (re-run to resume)")
        p.add_argument("--resolution", type=int, default=32, help="training resolution (default 32)")
        p.add_argument("--judge-resolution", type=int, default=None, help="judge resolution (default: --resolution)")
        p.add_argument("--judge-epochs", type=int, default=30, help="judge epochs (default 30)")
        p.add_argument("--steps", type=int, default=800, help="training steps per run (default 800)")
        p.add_argument("--batch-size", type=int, default=16, help="batch size (default 16)")
        p.add_argument("--base-channels", type=int, default=16, help="model width (default 16)")
        p.add_argument("--ema-decay", type=float, default=0.999, help="EMA of G and E (default 0.999)")
        p.add_argument("--seed", type=int, default=0, help="training seed, the same for every run (default 0)")
        p.add_argument("--samples-per-class", type=int, default=16, help="generated images per class (default 16)")
        p.add_argument("--inpaint-images", type=int, default=16, help="held-out images for inpainting (default 16)")
        p.add_argument("--parallel", type=int, default=2, help="training runs at once (default 2)")
        p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
        if name == "diffaugment":
            p.add_argument(
                "--policy", default="translation,color", help="DiffAugment policy (default translation,color)"
            )
        if name == "augmentation":
            p.add_argument("--weights", required=True, help="weights folder whose samples are added")
            p.add_argument("--per-class", type=int, default=20, help="generated images per class (default 20)")
            p.add_argument(
                "--equal-steps",
                action="store_true",
                help="also train a judge on the real photos only for as many steps as the real + generated one "
                "(its epochs scaled by the share of generated images): the control for the extra steps",
            )
        if name == "table1":
            p.add_argument("--write-readme", action="store_true", help="put the table into README.md")
    _budget_parser(sub)
    _enrolment_parser(sub)
    a = ap.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if a.experiment == "budget":
        from .budget import run_budget

        run_budget(
            a.data,
            a.recipe,
            a.minutes,
            a.out,
            a.judge,
            a.threads,
            a.samples_per_class,
            a.train_args.split() if a.train_args else None,
            a.name,
            a.seed,
            a.train_only,
        )
        if a.write_readme:
            readme = Path(__file__).resolve().parent.parent / "README.md"
            out = Path(a.out)
            write_readme_section(
                readme, "budget", (out / "budget.md").read_text() + f"\n![budget plot](docs/budget_{out.name}.png)\n"
            )
        return 0
    if a.experiment == "enrolment":
        from .enrol_eval import run_enrolment, write_readme

        try:
            run_enrolment(
                a.weights,
                a.data,
                a.judge,
                a.out,
                [c.strip() for c in a.classes.split(",") if c.strip()] if a.classes else None,
                a.photos,
                a.samples,
                a.trained_classes,
                a.seed,
                a.steps,
                a.threads,
                lambdas=a.lambdas,
                layer_lr=a.layer_lr,
            )
            if a.write_readme:
                readme = Path(__file__).resolve().parent.parent / "README.md"
                write_readme(a.out, readme, f"enrolment_{Path(a.data).stem}.jpg")
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        _log(f"wrote {Path(a.out) / 'enrolment.md'}")
        return 0
    if a.experiment == "table1":
        r = table1(a)
        if a.write_readme:
            readme = Path(__file__).resolve().parent.parent / "README.md"
            text = (
                f"{r['classes']} classes of `{Path(a.data).name}`, {a.resolution} px, {a.steps} steps, batch {a.batch_size}, "
                f"seed {a.seed}, {a.samples_per_class} samples per class; judge top-1 on held-out real images "
                f"{100 * r['judge_val_top1']:.1f}%.\n\n"
                + table1_markdown(r)
                + "\n![Table 1 bar plot](docs/table1.png)\n"
            )
            write_readme_section(readme, "table1", text)
    elif a.experiment == "diffaugment":
        diffaugment(a)
    else:
        augmentation(a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
