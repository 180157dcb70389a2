"""Reliability: a bad-input corpus through the Python API, the CLI and the app's HTTP API; property
tests of preprocessing and parsing; training killed with SIGKILL and resumed; disk full / read-only
run folders; 16 concurrent clients. The corpus is made here (no downloaded files)."""

from __future__ import annotations

import errno
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from cvaegan import cli, service as S
from cvaegan.config import TrainConfig
from cvaegan.data import load_images
from cvaegan.images import load_tensor, open_mask
from cvaegan.seeds import MAX_SEED, SeedError, check_seed, parse_seeds
from cvaegan.train import CHECKPOINT, TrainError, train

from conftest import ROOT, tiny_config


def _record(key: str, value) -> None:
    """Figures for README's Reliability section: merged into test-artifacts/reliability.json."""
    path = ROOT / "test-artifacts" / "reliability.json"
    path.parent.mkdir(exist_ok=True)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[key] = value
    path.write_text(json.dumps(data, indent=1) + "\n")


# --------------------------------------------------------------------------- the bad-input corpus


def _bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _noise(w, h, seed=0):
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8))


def image_corpus() -> dict[str, tuple[bytes, str, str]]:
    """name -> (file bytes, file suffix, expectation "ok" | "error")."""
    c: dict[str, tuple[bytes, str, str]] = {}
    c["zero_byte"] = (b"", ".png", "error")
    c["text_named_png"] = (b"GIF? no: plain text pretending to be an image", ".png", "error")
    c["html_named_jpg"] = (b"<html><body>not a photo</body></html>", ".jpg", "error")
    good_png, good_jpg = _bytes(_noise(48, 48)), _bytes(_noise(48, 48), "JPEG")
    c["truncated_png"] = (good_png[: len(good_png) // 2], ".png", "error")
    c["truncated_jpg"] = (good_jpg[:300], ".jpg", "error")
    c["bomb_png"] = (_bytes(Image.new("1", (12000, 12000))), ".png", "error")  # 144 Mpx declared, tiny file
    c["one_pixel"] = (_bytes(Image.new("RGB", (1, 1), (9, 9, 9))), ".png", "ok")
    c["tall_1x300"] = (_bytes(_noise(1, 300)), ".png", "ok")
    c["wide_500x2"] = (_bytes(_noise(500, 2)), ".png", "ok")
    for mode in ("1", "L", "LA", "P", "RGBA", "CMYK", "I;16", "F"):
        img = Image.new(mode, (40, 30))
        fmt = "TIFF" if mode in ("CMYK", "F") else "PNG"
        kw = {"transparency": 0} if mode == "P" else {}
        c[f"mode_{mode.replace(';', '')}"] = (_bytes(img, fmt, **kw), ".tif" if fmt == "TIFF" else ".png", "ok")
    exif = Image.Exif()
    exif[0x0112] = 8
    c["exif_rotated"] = (_bytes(_noise(60, 30), "JPEG", exif=exif.tobytes()), ".jpg", "ok")
    return c


def mask_corpus(size: int) -> dict[str, tuple[bytes, str]]:
    """name -> (mask PNG bytes, expectation); the background is a size x size photo."""
    z = np.zeros((size, size), np.uint8)
    grey = z.copy()
    grey[size // 4 : size // 2, :] = np.linspace(1, 200, size, dtype=np.uint8)
    box = z.copy()
    box[size // 3 : 2 * size // 3, size // 3 : 2 * size // 3] = 255
    return {
        "mask_empty": (_bytes(Image.fromarray(z)), "error"),
        "mask_full": (_bytes(Image.fromarray(z + 255)), "ok"),
        "mask_wrong_size": (_bytes(Image.fromarray(box).resize((size * 3, size * 2))), "ok"),
        "mask_non_binary": (_bytes(Image.fromarray(grey)), "ok"),
        "mask_broken": (b"\x89PNG\r\n\x1a\n garbage", "error"),
    }


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    files = {}
    for name, (data, suffix, expect) in image_corpus().items():
        p = d / f"{name}{suffix}"
        p.write_bytes(data)
        files[name] = (p, expect)
    return d, files


@pytest.fixture(scope="module")
def model(trained_export):
    from cvaegan import CVAEGAN

    return CVAEGAN.from_pretrained(str(trained_export))


def _check_api(fn, expect):
    """Run fn; an "error" case must raise one of our clear errors, an "ok" case must return."""
    if expect == "error":
        with pytest.raises((ValueError, RuntimeError, OSError)) as e:
            fn()
        assert len(str(e.value)) > 10
    else:
        fn()


def test_corpus_through_the_python_api(model, corpus_dir):
    _, files = corpus_dir
    r = model.config.resolution
    for path, expect in files.values():
        _check_api(lambda: S.reconstruct(model, str(path), None), expect)
        editor = {"background": str(path), "layers": [], "composite": None}
        full = np.full((8, 8, 4), 255, np.uint8)
        editor["layers"] = [full]  # mask of another size: resized to the photo
        _check_api(lambda: S.inpaint(model, editor, None, 2, 0), expect)
    bg = _noise(r, r)
    for name, (data, expect) in mask_corpus(r).items():
        mask_file = corpus_dir[0] / f"{name}.png"
        mask_file.write_bytes(data)
        for layer in (str(mask_file), data):  # as an uploaded file and as raw bytes
            _check_api(
                lambda: S.inpaint(model, {"background": bg, "layers": [layer], "composite": None}, None, 2, 0), expect
            )
    bad_classes = ["Nope", "999", 999, -1, None]
    for c in bad_classes:
        _check_api(lambda: S.generate(model, c, 1, False, 1, 1.0), "error")
    for seed in (-1, 2**64, 1.5, "abc", float("nan"), float("inf"), True, ""):
        _check_api(lambda: S.generate(model, "Circle 0", seed, False, 1, 1.0), "error")
    _check_api(lambda: S.generate(model, "Circle 0", MAX_SEED, False, 1, 1.0), "ok")
    _check_api(lambda: S.generate(model, "Circle 0", MAX_SEED, False, 2, 1.0), "error")  # runs past the end
    for amount in (float("nan"), float("inf"), 1e9, "x"):
        _check_api(
            lambda: S.explore(
                model, "Circle 0", 1, 1.0, {n: amount for n in model.config.directions} or {"pc1": amount}
            ),
            "error",
        )


def test_corpus_through_the_cli(trained_export, corpus_dir, tmp_path, capsys):
    _, files = corpus_dir
    for name, (path, expect) in files.items():
        rc = cli.main(
            [
                "reconstruct",
                "--weights",
                str(trained_export),
                "--image",
                str(path),
                "--out",
                str(tmp_path / f"{name}.png"),
                "--device",
                "cpu",
            ]
        )
        err = capsys.readouterr().err
        assert rc == (1 if expect == "error" else 0), (name, err)
        if expect == "error":
            assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1, (name, err)
    w = str(trained_export)
    for args in (
        ["--class", "Nope", "--seeds", "0"],
        ["--class", "999", "--seeds", "0"],
        ["--class", "Circle 0", "--seeds", "-1"],
        ["--class", "Circle 0", "--seeds", "1.5"],
        ["--class", "Circle 0", "--seeds", "5-2"],
        ["--class", "Circle 0", "--seeds", "abc"],
        ["--class", "Circle 0", "--seeds", "0", "--truncation", "nan"],
    ):
        rc = cli.main(["sample", "--weights", w, *args, "--out", str(tmp_path / "s.png")])
        err = capsys.readouterr().err
        assert rc == 1 and err.startswith("error: ") and err.count("\n") == 1, (args, err)


def test_corpus_through_the_http_api(trained_export, corpus_dir):
    from gradio_client import Client, handle_file

    from appserver import launch_app

    app, url = launch_app(str(trained_export))
    try:
        client = Client(url, verbose=False)
        w = str(trained_export)
        failures = []
        for name, (path, expect) in corpus_dir[1].items():
            try:
                client.predict(w, handle_file(str(path)), S.AUTO, api_name="/reconstruct")
                if expect == "error":
                    failures.append(f"{name}: accepted")
            except Exception as e:  # gradio_client re-raises the app's gr.Error text
                if expect == "ok" or len(str(e)) < 10:
                    failures.append(f"{name}: {e}")
        with pytest.raises(Exception, match="seed|minimum"):
            client.predict(w, "Circle 0", -1, False, 1, 1.0, api_name="/generate")
        _, _, used = client.predict(w, "Circle 0", 1.5, False, 1, 1.0, api_name="/generate")
        assert used in (1, 2)  # the seed box has precision 0: a fraction is rounded, not an error
        with pytest.raises(Exception, match="slider|between|maximum"):
            client.predict(w, "Circle 0", 1, 1.0, *([1e9] * 16), api_name="/explore")
        # NaN cannot even be sent: JSON has no NaN, the client refuses before any request
        assert not failures, failures
        _record("http_corpus_cases", len(corpus_dir[1]) + 4)
        gallery, _, _ = client.predict(w, "Circle 0", 1, False, 1, 1.0, api_name="/generate")
        assert len(gallery) == 1  # the worker survived the corpus
    finally:
        app.demo.close()


# --------------------------------------------------------------------------- property-based tests

_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(
    w=st.integers(1, 120),
    h=st.integers(1, 120),
    mode=st.sampled_from(["RGB", "L", "RGBA", "LA", "1", "P", "I;16"]),
    res=st.sampled_from([8, 32, 64]),
    seed=st.integers(0, 2**16),
)
def test_any_image_becomes_a_valid_model_input(w, h, mode, res, seed):
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode)
    x = load_tensor(_bytes(img), res)
    assert x.shape == (3, res, res) and x.dtype == torch.float32
    assert torch.isfinite(x).all() and x.min() >= -1 and x.max() <= 1


@_SETTINGS
@given(
    h=st.integers(1, 60),
    w=st.integers(1, 60),
    tw=st.integers(1, 80),
    th=st.integers(1, 80),
    kind=st.sampled_from(["bool", "uint8", "float", "rgba"]),
    seed=st.integers(0, 2**16),
)
def test_any_mask_becomes_a_boolean_mask_of_the_photo_size(h, w, tw, th, kind, seed):
    rng = np.random.default_rng(seed)
    if kind == "bool":
        a = rng.random((h, w)) > 0.5
    elif kind == "uint8":
        a = rng.integers(0, 256, (h, w), dtype=np.uint8)
    elif kind == "float":
        a = rng.normal(size=(h, w))
        a[rng.random((h, w)) < 0.1] = np.nan
    else:
        a = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    m = open_mask(a, (tw, th))
    assert m.dtype == bool and m.shape == (th, tw)
    if kind != "rgba" and (tw, th) == (w, h):
        assert np.array_equal(m, np.nan_to_num(a.astype(np.float64)) > 0)


@_SETTINGS
@given(st.text(max_size=30))
def test_seed_text_is_parsed_or_refused_clearly(text):
    try:
        seeds = parse_seeds(text)
    except SeedError as e:
        assert str(e)
        return
    assert seeds and all(isinstance(s, int) and 0 <= s <= MAX_SEED for s in seeds)


@_SETTINGS
@given(a=st.integers(0, 10**6), n=st.integers(0, 50), extra=st.lists(st.integers(0, MAX_SEED), max_size=5))
def test_seed_ranges_round_trip(a, n, extra):
    text = ",".join([f"{a}-{a + n}"] + [str(e) for e in extra])
    assert parse_seeds(text) == list(range(a, a + n + 1)) + extra


@_SETTINGS
@given(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-(2**70), 2**70),
        st.text(max_size=8),
        st.booleans(),
        st.none(),
    )
)
def test_seed_values_are_validated(v):
    try:
        s = check_seed(v)
    except SeedError:
        ok = (
            (not isinstance(v, bool) and isinstance(v, int) and 0 <= v <= MAX_SEED)
            or (isinstance(v, float) and math.isfinite(v) and v.is_integer() and 0 <= v <= MAX_SEED)
            or (isinstance(v, str) and v.strip().isdigit() and v.strip().isascii() and int(v) <= MAX_SEED)
        )
        assert not ok, v
        return
    assert isinstance(s, int) and 0 <= s <= MAX_SEED


@_SETTINGS
@given(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**6), 10**6), st.text(max_size=6), st.none()
    )
)
def test_slider_and_number_parsing(v):
    try:
        out = S.parse_number(v, "slider", -10, 10)
    except ValueError as e:
        assert "slider" in str(e)
        return
    assert math.isfinite(out) and -10 <= out <= 10


# --------------------------------------------------------------------------- training faults

STEPS, EVERY = 12, 2


def _train_cmd(data: Path, out: Path, resume: bool) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cvaegan",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--resolution",
        "32",
        "--z-dim",
        "16",
        "--base-channels",
        "8",
        "--max-channels",
        "32",
        "--steps",
        str(STEPS),
        "--batch-size",
        "8",
        "--log-every",
        "1",
        "--sample-every",
        "0",
        "--checkpoint-every",
        str(EVERY),
        "--ema-decay",
        "0.9",
        "--threads",
        "1",
        "--device",
        "cpu",
    ] + (["--resume"] if resume else [])


def _ckpt_ok(run: Path) -> int:
    """The checkpoint loads (weights_only) and is consistent; returns its step (0 when none yet)."""
    p = run / CHECKPOINT
    if not p.exists():
        return 0
    state = torch.load(p, map_location="cpu", weights_only=True)
    assert state["step"] % EVERY == 0 or state["step"] == STEPS
    assert set(state["nets"]) == set("CDGE")
    return int(state["step"])


def _mtime_ns(p: Path) -> int:
    try:
        return p.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def _last_logged(run: Path) -> int:
    """The last step in metrics.jsonl (a half-written last line is ignored)."""
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError):
            continue
    return 0


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_matches_uninterrupted(shapes_dir, tmp_path):
    """Kill `cvaegan train` with SIGKILL again and again (once as soon as a checkpoint write begins),
    resume each time; the checkpoint always loads, at most one checkpoint interval is lost, and the
    finished run equals an uninterrupted one."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT)}
    ref = tmp_path / "ref"
    subprocess.run(_train_cmd(shapes_dir, ref, False), env=env, check=True, capture_output=True, cwd=ROOT)
    run = tmp_path / "killed"
    rng = np.random.default_rng(0)
    kills, mid_write = 0, 0
    for attempt in range(12):
        done = (run / CHECKPOINT).exists() and _ckpt_ok(run) == STEPS
        if done:
            break
        start_ns = time.time_ns()
        proc = subprocess.Popen(
            _train_cmd(shapes_dir, run, (run / CHECKPOINT).exists()),
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        tmp_ckpt = run / (CHECKPOINT + ".tmp")
        t_end = time.monotonic() + 120
        if attempt % 2 == 0:  # kill the moment a checkpoint write of this process is under way
            # (a stale .tmp left by an earlier kill does not count: it must be (re)written after start)
            while proc.poll() is None and time.monotonic() < t_end and _mtime_ns(tmp_ckpt) <= start_ns:
                time.sleep(0.0005)
            if proc.poll() is None and _mtime_ns(tmp_ckpt) > start_ns:
                mid_write += 1
        else:  # kill at a random step (not a wall-clock delay: CI machines differ in speed)
            target = min(STEPS - 1, _last_logged(run) + int(rng.integers(1, 2 * EVERY + 1)))
            while proc.poll() is None and time.monotonic() < t_end and _last_logged(run) < target:
                time.sleep(0.002)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        step = _ckpt_ok(run)
        rows = (
            [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            if (run / "metrics.jsonl").exists()
            else []
        )
        if rows:  # work logged since the last checkpoint is at most one interval
            assert rows[-1]["step"] - step <= EVERY
    if _ckpt_ok(run) != STEPS:
        last = subprocess.run(
            _train_cmd(shapes_dir, run, (run / CHECKPOINT).exists()), env=env, capture_output=True, text=True, cwd=ROOT
        )
        assert last.returncode == 0, last.stderr[-2000:]
    assert kills >= 3 and mid_write >= 1, (kills, mid_write)
    _record(
        "sigkill", {"kills": kills, "during_checkpoint_write": mid_write, "steps": STEPS, "checkpoint_every": EVERY}
    )
    a = torch.load(ref / CHECKPOINT, weights_only=True)
    b = torch.load(run / CHECKPOINT, weights_only=True)
    assert a["step"] == b["step"] == STEPS
    for k in "CDGE":
        for name, t in a["nets"][k].items():
            assert torch.allclose(t.float(), b["nets"][k][name].float(), atol=1e-4), f"{k}.{name}"
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))  # no step logged twice or missing after resumes


@pytest.mark.slow
def test_sigterm_finishes_the_step_saves_a_checkpoint_and_resume_goes_on(shapes_dir, tmp_path):
    """SIGTERM (or Ctrl-C) mid-run: `cvaegan train` finishes its step, checkpoints it although the next periodic
    checkpoint is far away, exports and exits 0, so nothing is lost; `--resume` continues from that step."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT)}
    run = tmp_path / "run"

    def cmd(steps: int, resume: bool) -> list[str]:
        c = _train_cmd(shapes_dir, run, resume)
        c[c.index("--steps") + 1] = str(steps)
        c[c.index("--checkpoint-every") + 1] = "1000"
        return c

    proc = subprocess.Popen(cmd(500, False), env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t_end = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < t_end and _last_logged(run) < 3:
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert b"finishing this step" in err and b"stopped by SIGTERM at step" in out
    step = int(torch.load(run / CHECKPOINT, map_location="cpu", weights_only=True)["step"])
    assert 3 <= step < 500 and _last_logged(run) == step  # every logged step is in the checkpoint
    assert (run / "export" / "config.json").is_file()
    done = subprocess.run(cmd(step + 2, True), env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(torch.load(run / CHECKPOINT, map_location="cpu", weights_only=True)["step"]) == step + 2
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, step + 3))


def _short_run(shapes_dir, out, steps):
    data = load_images(shapes_dir, 32, progress=False)
    cfg = TrainConfig(steps=steps, batch_size=8, sample_every=0, checkpoint_every=2)
    return data, cfg, train(data, out, cfg, tiny_config(), progress=False)


def test_disk_full_keeps_the_previous_checkpoint(shapes_dir, tmp_path):
    """A real ENOSPC: the temporary checkpoint file is a link to /dev/full."""
    if not Path("/dev/full").exists():
        pytest.skip("/dev/full is Linux-only")
    run = tmp_path / "run"
    data, cfg, _ = _short_run(shapes_dir, run, 2)
    before = (run / CHECKPOINT).read_bytes()
    os.symlink("/dev/full", run / (CHECKPOINT + ".tmp"))
    cfg.steps = 4
    with pytest.raises(TrainError, match="previous checkpoint is intact") as e:
        train(data, run, cfg, None, resume=True, progress=False)
    assert "No space" in str(e.value) or errno.errorcode[errno.ENOSPC] in str(e.value)
    assert (run / CHECKPOINT).read_bytes() == before
    assert not (run / (CHECKPOINT + ".tmp")).exists()
    train(data, run, cfg, None, resume=True, progress=False)  # space back: the run goes on
    assert torch.load(run / CHECKPOINT, weights_only=True)["step"] == 4


def test_read_only_run_folder_is_a_clear_error(shapes_dir, tmp_path, monkeypatch):
    """Read-only folder (simulated: these tests may run as root, which ignores permissions)."""
    run = tmp_path / "run"
    data, cfg, _ = _short_run(shapes_dir, run, 2)
    before = (run / CHECKPOINT).read_bytes()
    real_open = open

    def ro_open(path, mode="r", *a, **kw):
        if str(path).startswith(str(run)) and any(ch in mode for ch in "wax"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, mode, *a, **kw)

    monkeypatch.setattr("builtins.open", ro_open)
    cfg.steps = 4
    with pytest.raises((TrainError, OSError), match="Read-only|read-only"):
        train(data, run, cfg, None, resume=True, progress=False)
    monkeypatch.undo()
    assert (run / CHECKPOINT).read_bytes() == before
    rc = cli.main(
        [
            "train",
            "--data",
            str(shapes_dir),
            "--out",
            "/proc/cvaegan-cannot-write-here",
            "--resolution",
            "32",
            "--steps",
            "1",
            "--batch-size",
            "8",
            "--base-channels",
            "8",
        ]
    )
    assert rc == 1


# --------------------------------------------------------------------------- concurrent users


def test_sixteen_concurrent_clients(trained_export):
    """16 gradio_client clients at once, mixing generate and inpaint: no errors, bounded memory."""
    from cvaegan.bench import load_test

    r = load_test(clients=16, requests_per_client=2, weights=str(trained_export))
    assert r["requests"] == 32 and r["errors"] == 0, r["error_examples"]
    assert r["rss_peak_mib"] - r["rss_start_mib"] < 500, r  # stated bound: 500 MiB over the warm server
    assert r["generate_p50_ms"] and r["inpaint_p95_ms"]
    _record("load_tiny_model", r)
