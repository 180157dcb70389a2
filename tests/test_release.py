"""Publishing a run: the release folder loads strictly and carries directions, figures, pictures and a card;
runs trained with classes left out; the judge's gate; the size limits of a weights folder."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cvaegan import CVAEGAN, cli, gate as G, service as S
from cvaegan.card import DIRECTIONS_SHEET, THUMBNAILS, directions_table, gate_section, loss_curves, sheet_file
from cvaegan.config import recipe_options
from cvaegan.data import load_images, split_indices
from cvaegan.directions import judged_effects
from cvaegan.errors import InputError
from cvaegan.hub import recorded_recipe
from cvaegan.judge import JudgeConfig, train_judge
from cvaegan.release import MAX_FILE_BYTES, ReleaseError, check_folder_size, refresh_directions, release
from cvaegan.speed import cpu_name
from cvaegan.train import SNAPSHOTS, TrainError, export_checkpoint, snapshot_name

from conftest import EXCLUDED, tiny_config


def test_release_folder(trained_export, shapes_dir, tmp_path):
    out = tmp_path / "weights" / "shapes"
    data = load_images(shapes_dir, 32, progress=False)
    aj = train_judge(
        data, tmp_path / "attr_judge", epochs=1, batch_size=16, widths=[8, 16], progress=False, attributes=True
    )
    figures = release(
        trained_export.parent,
        out,
        shapes_dir,
        "shapes",
        notes="Tiny test model.",
        examples=tmp_path / "examples",
        attribute_judge=tmp_path / "attr_judge",
        direction_judge=tmp_path / "attr_judge",
    )
    ex = sorted((tmp_path / "examples").glob("shapes_*_image.png"))
    assert len(ex) == 3 and all(p.with_name(p.name.replace("_image", "_mask")).is_file() for p in ex)
    for name in (
        "config.json",
        "encoder.safetensors",
        "generator.safetensors",
        "classifier.safetensors",
        "directions.safetensors",
        "samples.png",
        THUMBNAILS,
        DIRECTIONS_SHEET,
        "loss_curves.png",
        "README.md",
        "figures.json",
    ):
        assert (out / name).is_file(), name
    model = CVAEGAN.from_pretrained(str(out))
    assert model.config.directions[:3] == ["attr_x", "pc1", "pc2"]
    assert 0 <= figures["c_top1_real_val"] <= 1 and len(figures["c_top1_generated_per_class"]) == 4
    assert figures["recon_psnr_val_db"] > 5 and figures["split"].startswith("training images")
    assert set(figures["inpaint_psnr_by_iterations"]) == {"1", "2", "4", "8"}
    checks = figures["directions"]
    assert set(checks) == set(model.config.directions) and len(checks["pc1"]["class_kept"]) == 3
    assert "## Latent directions" in (out / "README.md").read_text()
    # the attribute judge re-measured every direction; attr_x's own change per slider unit is reported
    assert len(checks["attr_x"]["judged"]["attr_x"]) == 3 and "per_unit" in checks["attr_x"]
    assert "per_unit" not in checks["pc1"] and set(checks["pc1"]["change_sd"]) == set(aj.targets)
    assert figures["attribute_judge"]["val_r2"] == aj.training["val_r2"]
    assert (
        "attribute judge" in (out / "README.md").read_text()
        and "n/a (principal component)" in (out / "README.md").read_text()
    )
    card = (out / "README.md").read_text()
    # no --hardware: the card names the machine the run's one training process recorded (this one)
    machine = figures["machines"][0]
    assert machine["cpu"] == cpu_name() and machine["cores"] == os.cpu_count() and machine["gpu"] is None
    assert f"| hardware | CPU only, no GPU; this run trained on {cpu_name()} (" in card
    assert f"reference {machine['conv_gflops']:.1f} GFLOP/s per thread, 1 process from step 0 |" in card
    # the attr_* directions were fitted on generated samples scored by the same judge: the card says so
    assert figures["direction_fits"]["attr_x"]["source"] == "generated samples, judged"
    assert figures["direction_fits"]["attr_x"]["n"] == 4096 and figures["direction_judge"]["same_as_attribute_judge"]
    assert "NOT independent of the fit" in card and "on 4,096 generated samples" in card
    assert checks["pc1"]["samples"] == 16 and "over 16 samples" in card  # all 4 classes x 4 seeds
    assert "not** an independent judge" in card and "Tiny test model." in card
    assert f"{figures['c_top1_real_val']:.1%}" in card
    assert json.loads((out / "figures.json").read_text())["steps"] == figures["steps"]
    # a run that was not warm-started: its own training is all the networks had; the card adds no "in all" row
    assert figures["training_total"] == {"steps": figures["steps"], **figures["clock"]}
    assert "warm_start" not in figures and "training in all" not in card
    # the recipe the weights were trained with, for a later warm start to compare itself with
    run_cfg = json.loads((trained_export.parent / "train_config.json").read_text())
    assert figures["training"] == recipe_options(run_cfg) and recorded_recipe(out) == figures["training"]
    dirs = Image.open(out / DIRECTIONS_SHEET)  # 2 rows per direction, 5 columns, 2-px padding
    assert dirs.format == "JPEG" and Image.open(out / "samples.png").format == "PNG"
    assert dirs.size[0] == 5 * 32 + 6 * 2 and dirs.size[1] == 2 * len(model.config.directions) * 34 + 2
    assert f"![directions]({DIRECTIONS_SHEET})" in card
    assert not (out / "thumbnails.png").exists() and not (out / "directions.png").exists()
    sheet = Image.open(out / THUMBNAILS)
    assert sheet.size == (4 * 32, 32)
    # the app's picker slices the shipped sheet: one thumbnail per class, equal to a fresh render
    model.source = str(out)
    thumbs = S._thumbnails(model)
    assert len(thumbs) == 4 and thumbs[2].size == (32, 32)
    assert np.array_equal(np.asarray(thumbs[2]), np.asarray(sheet.crop((64, 0, 96, 32))))


def test_judged_effects_known_answer():
    row = {"amounts": [-2.0, 0.0, 2.0], "judged": {"attr_smile": [0.0, 1.0, 2.0], "attr_yaw": [5.0, 5.0, -1.0]}}
    e = judged_effects("attr_smile", row, {"attr_smile": 0.5, "attr_yaw": 3.0})
    assert e["per_unit"] == 1.0  # +2 attribute units = 4 SD over 4 slider units of one SD each
    assert judged_effects("attr_smile", row, {"attr_smile": 0.5, "attr_yaw": 3.0}, "attribute units")["per_unit"] == 0.5
    assert e["change_sd"] == {"attr_smile": 4.0, "attr_yaw": -2.0} and e["largest_other"] == ["attr_yaw", -2.0]
    row.update(e, class_kept=[1.0, 1.0, 0.5], measured=[])
    table = directions_table(
        {"attr_smile": row}, {"resolution": 64, "training": {"epochs": 3, "val_r2": {"attr_smile": 0.5}}}
    )
    assert "| attr_smile | +-2 | 100% / 100% / 50% | n/a | 1.00 (+4.00 SD) | yaw -2.00 |" in table


def test_loss_curves_draw_a_constant_series_across_the_middle(tmp_path):
    rows = [{"step": s, "acc/C": 1.0, "loss/C": 2.0 - s / 100} for s in range(0, 101, 10)]
    loss_curves(rows, tmp_path / "curves.png", keys=("loss/C", "acc/C"))
    img = np.asarray(Image.open(tmp_path / "curves.png").convert("RGB")).astype(int)
    red = (img[..., 0] > 150) & (img[..., 1] < 100) & (img[..., 2] < 100)  # the curves' colour
    ys_const = np.nonzero(red[:, 300 + 45 : 300 + 285].any(axis=1))[0]  # the second panel's plot area
    assert len(ys_const) and abs(ys_const.mean() - 160 / 2) < 8 and np.ptp(ys_const) <= 1  # flat, mid-height
    ys_fall = np.nonzero(red[:, 45:285].any(axis=1))[0]  # the falling series spans the first panel's height
    assert ys_fall.min() < 30 and ys_fall.max() > 125


def test_release_counts_the_steps_of_the_checkpoint_not_of_the_log(trained_export, tmp_path):
    """A run that logged past its last checkpoint: the card's steps and wall time stop at the checkpoint."""
    from cvaegan.release import checkpoint_rows

    run = tmp_path / "run"
    shutil.copytree(trained_export.parent, run)
    step, rows, clock = checkpoint_rows(run)
    assert step == rows[-1]["step"] and len(rows) > 2
    # the clock comes with it: the one training process's machine, for the card's hardware row
    assert clock["images"] == step * 32 and [m["step"] for m in clock["machines"]] == [0]
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": step + 150, "loss/C": 0.1, "time/step_s": 1.0}) + "\n")
    again_step, again_rows, _ = checkpoint_rows(run)
    assert again_step == step and again_rows == rows


# ---- runs trained with classes left out, the release gate -------------------------------------------


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_release_of_a_run_with_excluded_classes_behind_the_gate(
    excluded_run, class_judge, shapes_dir, tmp_path, capsys
):
    out = tmp_path / "weights"
    figures = release(
        excluded_run, out, shapes_dir, "shapes", hardware="test CPU", components=2, judge=class_judge,
        only_if_better=True, samples_per_class=2,
    )  # fmt: skip
    # the gate: nothing released yet, so it passes; measured on the 3 classes the model has (the judge knows 4)
    gate = json.loads((excluded_run / G.GATE_FILE).read_text())
    assert gate["passed"] and gate["released"] is None and "no weights yet" in gate["reason"]
    assert gate["classes"] == 3 and gate["judge"]["classes"] == 4 and gate["candidate"]["samples"] == 6
    assert 0 <= gate["candidate"]["judge_top1"] <= 1 and gate["candidate"]["recon_psnr_db"] > 0
    assert figures["release_gate"]["candidate"] == gate["candidate"]
    assert "| hardware | test CPU |" in (out / "README.md").read_text()  # --hardware still wins

    model = CVAEGAN.from_pretrained(str(out))
    assert model.config.class_folders == ["000.circle", "001.square", "003.cross"]
    assert figures["excluded_classes"] == [{"folder": EXCLUDED, "name": "Triangle 2"}]
    # held out: the photos train() held out, drawn on all 4 classes, of the 3 trained ones
    held = json.loads((excluded_run / "split.json").read_text())["val"]
    full = load_images(shapes_dir, 32, progress=False)
    drawn = [full.paths[i] for i in split_indices(full.labels, 0.1)[1].tolist()]
    assert held == [p for p in drawn if not p.startswith(EXCLUDED)] and len(held) == 6
    assert figures["split"] == "held-out" and figures["val_images"] == len(held) == gate["candidate"]["real_images"]
    assert len(figures["c_top1_generated_per_class"]) == 3 and figures["recon_psnr_val_db"] > 0
    card = (out / "README.md").read_text()
    assert "## Classes left out of training" in card and f"| `{EXCLUDED}` | Triangle 2 |" in card
    assert "enrol" in card and "about 10% of each class trained on" in card
    # the card states the training clock and the gate's figures, with the judge's ceiling
    clock = figures["clock"]
    assert clock["images"] > 0 and clock["cpu_min"] > 0 and f"{clock['images']:,} images seen" in card
    assert "## Released because the judge said better" in card and "(none: first release)" in card
    assert f"| judge top-1 on samples | {gate['candidate']['judge_top1']:.1%} |" in card
    assert gate["judge"]["real_top1"] is not None and f"the ceiling: {gate['judge']['real_top1']:.1%}" in card
    # the picker offers the model's classes only; the JPEG sheets are what the app and the card show
    assert S.class_display_names(model) == ["Circle 0", "Square 1", "Cross 3"]
    model.source = str(out)
    thumbs = S._thumbnails(model)
    sheet = Image.open(out / THUMBNAILS)
    assert sheet.format == "JPEG" and sheet.size == (3 * 32, 32) and len(thumbs) == 3
    assert np.array_equal(np.asarray(thumbs[2]), np.asarray(sheet.convert("RGB").crop((64, 0, 96, 32))))
    about = S._card(model)
    assert "data:image/jpeg;base64," in about and "Classes left out of training" in about
    assert check_folder_size(out) == sum(p.stat().st_size for p in out.iterdir())
    # re-fitting the sliders of this folder drops the left-out class again
    refresh_directions(out, shapes_dir, components=2)
    assert (out / DIRECTIONS_SHEET).is_file()

    # the same run again: the judge finds it exactly as good as what OUT holds, so it is not better
    before = _files(out)
    code = cli.main(
        ["release", "--run", str(excluded_run), "--out", str(out), "--data", str(shapes_dir), "--name", "shapes",
         "--judge", str(class_judge), "--only-if-better", "--samples-per-class", "2"]
    )  # fmt: skip
    assert code == cli.REFUSED_EXIT == 3
    printed = capsys.readouterr()
    assert "refused" in printed.out and "judge top-1" in printed.out and "left untouched" in printed.err
    assert _files(out) == before  # byte-identical
    gate = json.loads((excluded_run / G.GATE_FILE).read_text())
    assert not gate["passed"] and gate["released"] == {k: gate["candidate"][k] for k in gate["released"]}


def test_release_of_a_kept_snapshot(excluded_run, class_judge, shapes_dir, tmp_path, capsys):
    """`release --snapshot M` ships the checkpoint the run kept at M CPU-minutes, not the run's later last one."""
    run = tmp_path / "run"
    shutil.copytree(excluded_run, run)
    (run / G.GATE_FILE).unlink(missing_ok=True)
    (run / SNAPSHOTS).mkdir(exist_ok=True)
    shutil.copy(run / "checkpoint.pt", run / SNAPSHOTS / snapshot_name(1.5))
    # the run went on after the snapshot: a later step, a different G, and more logged rows
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    snap_step = state["step"]
    state["step"] = snap_step + 4
    for v in state["nets"]["G"].values():
        if v.is_floating_point():
            v.add_(0.25)
    torch.save(state, run / "checkpoint.pt")
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": snap_step + 4, "loss/C": 0.1, "time/step_s": 1.0}) + "\n")
    out = tmp_path / "weights"
    with pytest.raises(TrainError, match="no snapshot at 2 CPU-minutes.*its snapshots: 1.5"):
        release(run, out, shapes_dir, "shapes", snapshot=2)
    assert not out.exists()
    figures = release(
        run, out, shapes_dir, "shapes", components=2, judge=class_judge, samples_per_class=2, snapshot=1.5
    )
    assert figures["steps"] == snap_step and figures["checkpoint"] == "snapshots/minute_1.5.pt"
    assert figures["release_gate"]["candidate"]["step"] == snap_step
    assert figures["release_gate"]["candidate"]["checkpoint"] == "snapshots/minute_1.5.pt"
    card = (out / "README.md").read_text()
    assert "the run's snapshot at 1.5 CPU-minutes (`snapshots/minute_1.5.pt`)" in card
    # what shipped is the snapshot's generator, not the last checkpoint's
    assert cli.main(["export", "--run", str(run), "--out", str(tmp_path / "snap"), "--snapshot", "1.5"]) == 0
    snap = CVAEGAN.from_pretrained(str(tmp_path / "snap")).generator.state_dict()
    last = CVAEGAN.from_pretrained(str(export_checkpoint(run, tmp_path / "last"))).generator.state_dict()
    shipped = CVAEGAN.from_pretrained(str(out)).generator.state_dict()
    assert all(torch.equal(shipped[k], snap[k]) for k in snap)
    assert not all(torch.equal(shipped[k], last[k]) for k in last)
    assert cli.main(["export", "--run", str(run), "--out", str(tmp_path / "x"), "--snapshot", "7"]) == 1
    assert "its snapshots: 1.5" in capsys.readouterr().err and not (tmp_path / "x").exists()


def _scores(hits: str, fid: float) -> dict:
    return {"judge_top1": hits.count("1") / len(hits), "fid": fid, "hits": hits}


def test_gate_rule():
    old = _scores("1" * 25 + "0" * 75, 10.0)
    new = _scores("1" * 25 + "0" * 5 + "1" * 20 + "0" * 50, 10.5)  # 20 more hits, none lost: z = 4.47
    assert G.paired(new, old) == {"candidate_only": 20, "released_only": 0, "z": 4.472}
    assert G.decide(new, None)[0] and G.decide(new, old)[0]
    assert not G.decide(new, {**new, "fid": 20.0})[0]  # equal top-1 is not better
    worse_fid = {**_scores(new["hits"], 11.5)}
    assert not G.decide(worse_fid, old)[0]  # FID more than 1.1 x worse
    assert G.decide(worse_fid, old, fid_tolerance=1.2)[0]
    assert "FID 11.50 > 1.1 x 10.00" in G.decide(worse_fid, old)[1]
    # a small lead is a tie: 3 more hits out of 100 (4 won, 1 lost: z = 1.34)
    small = _scores("0" + "1" * 24 + "1" * 4 + "0" * 71, 10.0)
    assert G.paired(small, old)["z"] == 1.342 and small["judge_top1"] > old["judge_top1"]
    passed, why = G.decide(small, old)
    assert not passed and "z = 1.34 < 1.64 (not clearly better)" in why
    assert G.decide(small, old, min_z=0)[0]  # any lead
    with pytest.raises(InputError, match="different numbers of samples"):
        G.paired(small, _scores("1", 1.0))


def _fake_judge_scores(scores: dict, out):
    """A stand-in for gate.judge_scores: the weights in OUT score scores["released"], anything else
    scores["candidate"] (read at call time, so a test can change them between releases). The first seed of
    each call is appended to scores["seeds"], if that list is there."""

    def fake_scores(model, judge, data, val_idx, folders, samples_per_class=10, first_seed=G.FIRST_SEED):
        scores.get("seeds", []).append(first_seed)
        s = scores["released" if model.source == str(out) else "candidate"]
        n = len(folders) * 100  # enough samples for a 10-point lead to be clear (z above 5)
        hits = "1" * round(s["judge_top1"] * n) + "0" * (n - round(s["judge_top1"] * n))
        return {**s, "recon_psnr_db": 20.0, "samples": n, "real_images": len(val_idx), "hits": hits}

    return fake_scores


def test_gate_replaces_older_weights_only_when_better(excluded_run, class_judge, shapes_dir, tmp_path, monkeypatch):
    out = tmp_path / "weights"
    export_checkpoint(excluded_run, out)  # "released" weights, with files an older release left behind
    for name in ("thumbnails.png", "directions.png", "evaluation.json"):
        (out / name).write_bytes(b"old")
    scores = {"candidate": {"judge_top1": 0.5, "fid": 12.0}, "released": {"judge_top1": 0.4, "fid": 10.0}}

    monkeypatch.setattr(G, "judge_scores", _fake_judge_scores(scores, out))
    args = dict(components=2, judge=class_judge, only_if_better=True)
    before = _files(out)
    with pytest.raises(G.GateRefused, match="FID 12.00 > 1.1 x 10.00"):  # better top-1, FID too much worse
        release(excluded_run, out, shapes_dir, "shapes", **args)
    assert _files(out) == before
    scores["candidate"]["fid"] = 10.9
    figures = release(excluded_run, out, shapes_dir, "shapes", **args)
    assert figures["release_gate"]["passed"] and figures["release_gate"]["released"]["judge_top1"] == 0.4
    assert figures["release_gate"]["paired"]["released_only"] == 0 and "hits" not in figures["release_gate"]["released"]
    assert "| 40.0% |" in (out / "README.md").read_text()  # the replaced weights' top-1 beside this release's
    assert (out / THUMBNAILS).is_file() and (out / DIRECTIONS_SHEET).is_file()
    assert not any((out / n).exists() for n in ("thumbnails.png", "directions.png", "evaluation.json"))
    with pytest.raises(InputError, match="--only-if-better needs --judge"):
        release(excluded_run, out, shapes_dir, "shapes", only_if_better=True)
    # a candidate that trained on every photo cannot be compared with weights measured on held-out ones
    everything = tmp_path / "no_split"
    shutil.copytree(excluded_run, everything)
    (everything / G.GATE_FILE).unlink(missing_ok=True)  # left there by the gates above
    cfg = json.loads((everything / "train_config.json").read_text())
    (everything / "train_config.json").write_text(json.dumps({**cfg, "val_fraction": 0.0}))
    before = _files(out)
    with pytest.raises(InputError, match="--val-fraction 0.1"):
        release(everything, out, shapes_dir, "shapes", **args)
    assert _files(out) == before and not (everything / G.GATE_FILE).exists()


def test_gate_only_measures_and_never_touches_out(excluded_run, class_judge, shapes_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "weights"
    export_checkpoint(excluded_run, out)
    scores = {"candidate": {"judge_top1": 0.5, "fid": 12.0}, "released": {"judge_top1": 0.4, "fid": 10.0}}

    monkeypatch.setattr(G, "judge_scores", _fake_judge_scores(scores, out))
    before = _files(out)
    with pytest.raises(InputError, match="--gate-only needs --judge"):
        release(excluded_run, out, shapes_dir, "shapes", gate_only=True)
    with pytest.raises(G.GateRefused, match="FID 12.00 > 1.1 x 10.00"):
        release(excluded_run, out, shapes_dir, "shapes", judge=class_judge, gate_only=True)
    assert _files(out) == before and not json.loads((excluded_run / G.GATE_FILE).read_text())["passed"]
    scores["candidate"]["fid"] = 10.5  # now it would be released: still nothing written to OUT
    figures = release(excluded_run, out, shapes_dir, "shapes", judge=class_judge, gate_only=True)
    assert set(figures) == {"release_gate"} and figures["release_gate"]["passed"]
    assert _files(out) == before and json.loads((excluded_run / G.GATE_FILE).read_text())["passed"]
    base = ["release", "--run", str(excluded_run), "--out", str(out), "--data", str(shapes_dir), "--name", "shapes"]
    assert cli.main([*base, "--judge", str(class_judge), "--gate-only"]) == 0
    assert "would be released" in capsys.readouterr().out and _files(out) == before
    scores["candidate"]["judge_top1"] = 0.4  # a tie: refused, exit code 3
    assert cli.main([*base, "--judge", str(class_judge), "--gate-only"]) == cli.REFUSED_EXIT
    assert "left untouched" in capsys.readouterr().err and _files(out) == before
    # a confirmation on other seeds: both models draw from the seed asked for, and gate.json records it
    scores["seeds"] = []
    confirm = ["--gate-first-seed", "30000", "--samples-per-class", "30"]
    assert cli.main([*base, "--judge", str(class_judge), "--gate-only", *confirm]) == cli.REFUSED_EXIT
    gate = json.loads((excluded_run / G.GATE_FILE).read_text())
    assert scores["seeds"] == [30000, 30000] and (gate["first_seed"], gate["samples_per_class"]) == (30000, 30)
    assert "seeds from 30,000" in capsys.readouterr().out
    # the card says when its gate drew other seeds than the default
    other_seeds = gate_section(gate)
    assert "seeds from 30,000 (the default gate and the card's judge figures draw seeds from 20,000:" in other_seeds
    default = {**gate, "first_seed": G.FIRST_SEED}
    assert "seeds from 20,000." in gate_section(default) and "draw seeds from" not in gate_section(default)
    assert cli.main([*base, "--judge", str(class_judge), "--gate-only"]) == cli.REFUSED_EXIT
    assert (
        scores["seeds"][2:] == [G.FIRST_SEED] * 2
        and json.loads((excluded_run / G.GATE_FILE).read_text())["first_seed"] == G.FIRST_SEED
    )
    with pytest.raises(InputError, match="--gate-first-seed must be at least 0"):
        release(excluded_run, out, shapes_dir, "shapes", judge=class_judge, gate_only=True, gate_first_seed=-1)
    assert _files(out) == before


class _FolderOracle(torch.nn.Module):
    """A judge that reads, from an image's first pixel, the code of the class folder it was drawn for."""

    def __init__(self, folders: list[str], code: dict[str, float]):
        super().__init__()
        self.config = JudgeConfig(resolution=32, num_classes=len(folders), widths=[len(folders)])
        self.config.class_folders = self.config.class_names = list(folders)
        self.codes = torch.tensor([code[f] for f in folders])
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        k = (x[:, 0, 0, 0, None] - self.codes[None]).abs().argmin(1)
        logits = torch.nn.functional.one_hot(k, len(self.codes)).float() * 10 + 0.01 * x[:, 1, 0, : len(self.codes)]
        return logits, logits.flatten(1)


class _ColourJudge(torch.nn.Module):
    """A judge whose features are an image's mean colour per channel (its logits say nothing)."""

    def __init__(self, folders: list[str]):
        super().__init__()
        self.config = JudgeConfig(resolution=32, num_classes=len(folders), widths=[3])
        self.config.class_folders = self.config.class_names = list(folders)
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x.new_zeros(len(x), len(self.config.class_folders)), x.mean((2, 3))


def test_gate_reports_precision_and_recall_beside_the_rule(shapes_dir, monkeypatch):
    """Samples that ignore z reach less of the held-out photos' spread than samples that vary with it: the gate's
    recall says so (reported, not part of the rule) in its record, the terminal table and the card's gate section;
    a record from before the figure shows none."""
    data = load_images(shapes_dir, 32, progress=False)
    folders = data.class_folders
    model = CVAEGAN(tiny_config(num_classes=len(folders), class_folders=folders)).eval()
    train_idx, val = split_indices(data.labels, 0.25)
    photos = [data.images[train_idx[data.labels[train_idx] == k]].float() / 127.5 - 1 for k in range(len(folders))]

    def drawer(vary: bool):
        def drawn(model, z, c, batch_size=1):  # training photos of each sample's class: all of them, or one
            seen = torch.zeros(len(folders), dtype=torch.long)
            out = []
            for k in c.tolist():
                out.append(photos[k][seen[k] % len(photos[k]) if vary else 0])
                seen[k] += 1
            return torch.stack(out)

        return drawn

    judge, scores = _ColourJudge(folders), {}
    for vary in (True, False):
        monkeypatch.setattr(G.I, "generate", drawer(vary))
        scores[vary] = G.judge_scores(model, judge, data, val, folders, samples_per_class=12)
    varied, alike = scores[True], scores[False]
    assert 0 < varied["judge_recall"] <= 1 and 0 <= varied["judge_precision"] <= 1
    assert alike["judge_recall"] == 0 < varied["judge_recall"]  # one photo per class, twelve times: no radius
    assert alike["fid"] > varied["fid"]
    comparison = {"candidate": alike, "released": varied, "held_out": True, "samples_per_class": 12, "classes": 4}
    comparison |= {"first_seed": G.FIRST_SEED, "judge": {"folder": "j", "resolution": 32, "classes": 4}}
    comparison |= {"passed": False, "reason": "r", "rule": "the rule"}
    shown = G.table(comparison).splitlines()
    assert "recall" in shown[1] and shown[2].split()[-1] == "0.000"
    assert shown[3].split()[-2:] == [f"{varied['judge_precision']:.3f}", f"{varied['judge_recall']:.3f}"]
    card = gate_section(comparison)
    row = f"| {alike['judge_precision']:.3f} / 0.000 | {varied['judge_precision']:.3f} / {varied['judge_recall']:.3f} |"
    assert "precision / recall of the samples" in card and row in card
    # a record written before the figure: no row in the card, "-" in the table
    older = {k: v for k, v in alike.items() if k not in ("judge_precision", "judge_recall")}
    before = comparison | {"candidate": older, "released": None}
    assert "precision / recall" not in gate_section(before)
    assert G.table(before).splitlines()[2].split()[-2:] == ["-", "-"]


def test_gate_matches_the_judges_classes_by_folder(shapes_dir, monkeypatch):
    """A judge of more classes, in another order: the scores map classes by folder name, never by index."""
    data = load_images(shapes_dir, 32, progress=False)
    torch.manual_seed(0)
    model = CVAEGAN(tiny_config(num_classes=3, class_folders=["000.circle", "001.square", "003.cross"])).eval()
    code = {f: -0.8 + 0.4 * i for i, f in enumerate(["000.circle", "001.square", "002.triangle", "003.cross", "x"])}
    judge = _FolderOracle(["x", "003.cross", "002.triangle", "000.circle", "001.square"], code)

    def drawn(model, z, c, batch_size=1):  # what G would draw, marked with its class folder's code
        x = torch.tanh(z[:, :1, None, None].expand(len(z), 3, 32, 32) * 0.3).clone()
        x[:, 0, 0, 0] = torch.tensor([code[model.config.class_folders[int(i)]] for i in c])
        return x

    monkeypatch.setattr(G.I, "generate", drawn)
    val = split_indices(data.labels, 0.25)[1]
    judged = []  # the batch sizes the judge sees: each image once, for top-1, FID and spread alike
    judge.register_forward_hook(lambda module, args, out: judged.append(len(args[0])))
    s = G.judge_scores(model, judge, data, val, model.config.class_folders, samples_per_class=3)
    assert s["judge_top1"] == 1.0 and s["samples"] == 9 and s["real_images"] == 12  # triangle's 4 photos left out
    assert sum(judged) == 9 + 12
    assert np.isfinite(s["fid"]) and s["recon_psnr_db"] > 0
    # the spread within a class, reported beside the rule: this judge's features are its one-hot guesses, so the
    # samples of a class are alike to it (spread about 0; over all classes at once it would be about 2/3)
    assert 0 <= s["judge_spread"] < 0.01 and 0 <= s["judge_spread_real"] <= 1
    comparison = {"candidate": s, "released": None, "held_out": True, "samples_per_class": 3, "classes": 3}
    shown = G.table({**comparison, "first_seed": G.FIRST_SEED, "judge": {"folder": "j"}, "passed": True, "reason": "r"})
    assert f"{s['judge_spread']:.3f}" in shown and "spread" in shown and shown.splitlines()[-1] == "passed: r"
    other = G.judge_scores(model, judge, data, val, model.config.class_folders, 3, G.FIRST_SEED + 1000)
    assert other["judge_top1"] == 1.0 and other["fid"] != s["fid"]  # other seeds, other samples
    with pytest.raises(InputError, match="missing"):
        G.judge_scores(model, judge, data, val, ["002.triangle"], samples_per_class=1)  # not a class of the model


def test_folder_size_limits(tmp_path):
    w = tmp_path / "w"
    w.mkdir()
    for name, mib in (("generator.safetensors", 7), ("encoder.safetensors", 6), ("config.json", 0)):
        with open(w / name, "wb") as f:
            f.truncate(mib * 2**20)
    assert check_folder_size(w) == 13 * 2**20
    with open(w / "classifier.safetensors", "wb") as f:  # 7 + 6 + 8 = 21 MiB > 20 MiB
        f.truncate(8 * 2**20)
    with pytest.raises(ReleaseError, match=r"the folder holds 21.0 MiB.*Biggest files: classifier.safetensors 8.0 MiB"):
        check_folder_size(w)
    os.remove(w / "classifier.safetensors")
    with open(w / "discriminator.safetensors", "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(ReleaseError, match="discriminator.safetensors is 15.0 MiB"):
        check_folder_size(w, max_folder=2**40)


def test_picture_sheets_of_older_folders_still_show(tiny_model, tmp_path):
    """Folders released before the JPEG sheets keep thumbnails.png / directions.png; readers fall back."""
    w = tmp_path / "w"
    w.mkdir()
    old = Image.new("RGB", (4 * 32, 32))
    for i in range(4):
        old.paste((60 * i, 20, 200 - 40 * i), (32 * i, 0, 32 * i + 32, 32))
    old.save(w / "thumbnails.png")
    Image.new("RGB", (8, 8), (9, 9, 9)).save(w / "directions.png")
    (w / "README.md").write_text("# card\n\n![directions](directions.png)\n")
    tiny_model.source = str(w)
    assert sheet_file(w, THUMBNAILS) == w / "thumbnails.png" and sheet_file(w, DIRECTIONS_SHEET) == w / "directions.png"
    assert np.asarray(S._thumbnails(tiny_model)[3])[5, 5].tolist() == [180, 20, 80]
    assert "data:image/png;base64," in S._card(tiny_model)
    Image.new("RGB", (4 * 32, 32), (1, 250, 1)).save(w / THUMBNAILS, quality=90)  # the new sheet wins
    assert sheet_file(w, THUMBNAILS) == w / THUMBNAILS and np.asarray(S._thumbnails(tiny_model)[3])[5, 5][1] > 240
    assert sheet_file(tmp_path / "nothing", THUMBNAILS) is None and sheet_file(None, THUMBNAILS) is None


def test_a_measurement_record_goes_to_figures_and_card_and_skips_what_is_no_record(tmp_path):
    """`card.put_record`, how fit-feather, fit-guesser and refit-classifier store what they measured: the record
    under its key in figures.json (other keys kept), the section once in the card after the judge's figures; a
    figures.json that is not a JSON object is left as it is (read as no figures, as `refit.read_figures` does)."""
    from cvaegan.card import JUDGE_END, put_record

    (tmp_path / "figures.json").write_text(json.dumps({"steps": 5}))
    (tmp_path / "README.md").write_text(f"# card\n\n{JUDGE_END}\n\n## Usage\n")
    for value in (1, 2):
        put_record(tmp_path, "thing", {"value": value}, "thing", f"## Thing\n\nvalue {value}\n")
    assert json.loads((tmp_path / "figures.json").read_text()) == {"steps": 5, "thing": {"value": 2}}
    card = (tmp_path / "README.md").read_text()
    assert card.count("## Thing") == 1 and "value 2" in card and card.index(JUDGE_END) < card.index("## Thing")
    assert card.index("## Thing") < card.index("## Usage")
    (tmp_path / "figures.json").write_text("[1, 2]")
    put_record(tmp_path, "thing", {"value": 3}, "thing", "## Thing\n\nvalue 3\n")
    assert (tmp_path / "figures.json").read_text() == "[1, 2]" and "value 3" in (tmp_path / "README.md").read_text()


def test_example_photos_are_the_samples_c_is_surest_of(tiny_model, tmp_path):
    from cvaegan import inference as I
    from cvaegan.images import to_pil
    from cvaegan.release import EXAMPLE_SEEDS, clearest_sample, write_examples
    from cvaegan.train import grid_classes

    model = tiny_model
    with torch.no_grad():  # a C whose verdict depends on the image, so that the seeds differ in C's eyes
        for p in model.classifier.parameters():
            p.normal_(0, 0.5)
    model.eval()
    seeds = list(EXAMPLE_SEEDS)
    for c in range(model.config.num_classes):
        imgs = I.sample(model, c, seeds, truncation=0.8)
        with torch.no_grad():
            p = model.classifier(imgs)[0].float().softmax(1)[:, c]
        seed, img = clearest_sample(model, c)
        assert seed == seeds[int(p.argmax())] and torch.equal(img, imgs[int(p.argmax())])
    # each written photo is its class's clearest sample, as an 8-bit PNG of it, and for some example that is not
    # the seed 100 + i the pick used before
    paths = write_examples(model, "tiny", tmp_path, count=3)
    before = []
    for i, (path, c) in enumerate(zip(paths, grid_classes(model.config.num_classes, 3))):
        written = np.asarray(Image.open(path).convert("RGB"))
        assert np.array_equal(written, np.asarray(to_pil(clearest_sample(model, c)[1])))
        before.append(np.array_equal(written, np.asarray(to_pil(I.sample(model, c, [100 + i], truncation=0.8)[0]))))
    assert not all(before)
