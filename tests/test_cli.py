"""The command line: --help everywhere, byte-identical samples, one-line errors, export from a run."""

import hashlib
import json
import subprocess
import sys

import pytest

from cvaegan.cli import COMMANDS, main

from conftest import ROOT


def run_cli(*args, check=True):
    out = subprocess.run(
        [sys.executable, "-m", "cvaegan", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    if check:
        assert out.returncode == 0, out.stderr
    return out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_for_every_command(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "usage:" in text and "--" in text


def test_sample_is_byte_identical(trained_export, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert (
        main(["sample", "--weights", str(trained_export), "--class", "Square 1", "--seeds", "0-3,9", "--out", str(a)])
        == 0
    )
    assert main(["sample", "--weights", str(trained_export), "--class", "1", "--seeds", "0-3,9", "--out", str(b)]) == 0
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    c = tmp_path / "c.png"
    main(["sample", "--weights", str(trained_export), "--class", "Square 1", "--seeds", "0-3,10", "--out", str(c)])
    assert c.read_bytes() != a.read_bytes()


def test_errors_are_one_line(trained_export, tmp_path):
    out = run_cli(
        "sample",
        "--weights",
        str(trained_export),
        "--class",
        "Dodecahedron",
        "--out",
        str(tmp_path / "x.png"),
        check=False,
    )
    assert out.returncode == 1
    assert out.stderr.startswith("error: unknown class 'Dodecahedron'") and "Traceback" not in out.stderr
    assert "Circle 0" in out.stderr
    out = run_cli(
        "sample",
        "--weights",
        str(trained_export),
        "--class",
        "0",
        "--seeds",
        "5-1",
        "--out",
        str(tmp_path / "x.png"),
        check=False,
    )
    assert out.returncode == 1 and "goes backwards" in out.stderr
    out = run_cli("train", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "run"), check=False)
    assert out.returncode == 1 and "does not exist" in out.stderr and "Traceback" not in out.stderr


def test_resume_checks_options_an_old_run_folder_does_not_record(tmp_path, shapes_dir, capsys):
    """A run written before an option existed has no key for it; --resume compares the given value with the one
    the checkpoint loads (the field's default), and a model_config.json or train_config.json that is not JSON
    (or not text) is named, untouched."""
    from cvaegan.config import ModelConfig

    run = tmp_path / "old_run"
    run.mkdir()
    old = ModelConfig.for_resolution(32, 3, base_channels=8).to_dict()
    del old["max_channels"], old["d_selfsup"]  # keys an older cvaegan did not write
    (run / "model_config.json").write_text(json.dumps(old))
    args = ["train", "--data", str(tmp_path / "no_photos_needed"), "--out", str(run), "--resume"]
    assert main([*args, "--max-channels", "128", "--d-selfsup"]) == 1
    err = capsys.readouterr().err
    assert "--max-channels (the run has 256, given 128)" in err and "--d-selfsup (the run has False, given True)" in err
    # the same values as the run's defaults pass the check (and the run then fails on the missing photos)
    assert main([*args, "--max-channels", "256", "--base-channels", "8"]) == 1
    err = capsys.readouterr().err
    assert "differ" not in err and "no_photos_needed" in err
    (run / "model_config.json").write_text("{not json")
    assert main(args) == 1
    assert "model_config.json: not valid JSON" in capsys.readouterr().err
    assert (run / "model_config.json").read_text() == "{not json"
    (run / "model_config.json").write_bytes(b"\xff\xfe\x00binary")  # not even text
    assert main(args) == 1
    assert "model_config.json: not valid JSON" in capsys.readouterr().err
    assert (run / "model_config.json").read_bytes() == b"\xff\xfe\x00binary"
    # the run's train_config.json, read once the photos are (so with photos here), is named the same way
    (run / "model_config.json").write_text(json.dumps(old))
    for broken in ("{not json", "[1, 2]"):
        (run / "train_config.json").write_text(broken)
        assert main(["train", "--data", str(shapes_dir), "--out", str(run), "--resume"]) == 1
        err = capsys.readouterr().err
        assert "train_config.json: " in err and ("not valid JSON" in err or "expected a JSON object" in err)
        assert (run / "train_config.json").read_text() == broken


@pytest.mark.slow
def test_train_resume_and_export_via_cli(shapes_dir, tmp_path):
    run = tmp_path / "run"
    common = [
        "--data",
        str(shapes_dir),
        "--out",
        str(run),
        "--resolution",
        "32",
        "--z-dim",
        "16",
        "--base-channels",
        "8",
        "--max-channels",
        "32",
        "--batch-size",
        "16",
        "--sample-every",
        "2",
        "--checkpoint-every",
        "2",
        "--g-cond",
        "concat",  # G as in the paper (the default v3 has cbn), so that a warm start below can convert it
    ]
    run_cli("train", *common, "--steps", "2")
    out = run_cli("train", *common, "--steps", "3", check=False)
    assert out.returncode == 1 and "--resume" in out.stderr
    run_cli("train", *common, "--steps", "4", "--resume")
    assert (run / "samples" / "step_0000004.png").is_file()
    # an option that would change the method is refused on --resume (not silently ignored); nothing is lost
    ckpt = (run / "checkpoint.pt").read_bytes()
    out = run_cli("train", *common, "--steps", "5", "--resume", "--lr", "0.001", check=False)
    assert out.returncode == 1 and "--lr (the run has 0.0002, given 0.001)" in out.stderr
    assert (run / "checkpoint.pt").read_bytes() == ckpt
    # so is an architecture option: the checkpoint's networks would win, and the user would not be told
    out = run_cli("train", *common, "--steps", "5", "--resume", "--base-channels", "16", check=False)
    assert out.returncode == 1 and "--base-channels (the run has 8, given 16)" in out.stderr
    assert "Traceback" not in out.stderr and (run / "checkpoint.pt").read_bytes() == ckpt
    # a gradient clip may be switched on when resuming; the run's config records it, and it stays on
    run_cli("train", *common, "--steps", "5", "--resume", "--grad-clip-auto", "4")
    assert json.loads((run / "train_config.json").read_text())["grad_clip_auto"] == 4.0
    run_cli("train", *common, "--steps", "6", "--resume")
    cfg = json.loads((run / "train_config.json").read_text())
    assert cfg["grad_clip_auto"] == 4.0 and cfg["steps"] == 6
    assert "clip/G" in json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    # a run trained at a constant step size may end with a cool-down when resumed: the last steps' size falls
    out = run_cli(
        "train",
        *common,
        "--steps",
        "9",
        "--resume",
        "--cooldown-steps",
        "3",
        "--log-every",
        "1",
        "--budget-minutes",
        "600",
    )
    assert "its cool-down of 3 steps then moves to the new end" in out.stdout  # the note on going on
    assert json.loads((run / "train_config.json").read_text())["cooldown_steps"] == 3
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows if r["step"] >= 6] == pytest.approx([2e-4, 2e-4, 2e-4 * 2 / 3, 2e-4 / 3])
    run_cli("export", "--run", str(run), "--out", str(tmp_path / "w"))
    for name in ("config.json", "encoder.safetensors", "generator.safetensors", "classifier.safetensors"):
        assert (tmp_path / "w" / name).is_file()
    # a released concat model goes on training with class-conditional BatchNorm in G
    warm = ["--data", str(shapes_dir), "--out", str(tmp_path / "cbn"), "--init-from", str(run / "export")]
    run_cli("train", *warm, "--g-cond", "cbn", "--steps", "1", "--batch-size", "16", "--sample-every", "1")
    assert json.loads((tmp_path / "cbn" / "export" / "config.json").read_text())["g_cond"] == "cbn"
    # the default preset (v3) has cbn, but only an explicit --g-cond converts released weights
    warm[3] = str(tmp_path / "kept")
    run_cli("train", *warm, "--steps", "1", "--batch-size", "16", "--sample-every", "1")
    assert json.loads((tmp_path / "kept" / "export" / "config.json").read_text())["g_cond"] == "concat"


def test_init_from_skips_the_presets_warm_start_steps_unless_asked(capsys):
    import argparse

    from cvaegan.cli import init_from_config
    from cvaegan.config import TrainConfig

    v2 = TrainConfig.from_preset("v2")
    assert v2.pretrain_steps > 0
    assert init_from_config(argparse.Namespace(init_from="w"), v2).pretrain_steps == 0
    assert "warm-start steps are skipped" in capsys.readouterr().out
    given = TrainConfig.from_preset("v2", pretrain_steps=40)
    assert init_from_config(argparse.Namespace(init_from="w", pretrain_steps=40), given).pretrain_steps == 40
