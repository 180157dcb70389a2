"""Save/load round trips, strict loading, and the Hub path with the real huggingface_hub client
against a local Hub look-alike on 127.0.0.1 (no traffic leaves the machine)."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cvaegan import CVAEGAN, hub
from cvaegan.hub import WeightsError, resolve_weights

from conftest import ROOT, tiny_config
from hubserver import FakeHub


def _outputs(model: CVAEGAN) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    r = model.config.resolution
    x = torch.rand(2, 3, r, r, generator=g) * 2 - 1
    c = torch.tensor([0, 3])
    z = torch.randn(2, model.config.z_dim, generator=g)
    with torch.no_grad():
        return [model.generator(z, c), *model.encoder(x, c), *model.classifier(x)]


@pytest.mark.parametrize("fp16", [False, True])
def test_save_load_round_trip(tiny_model, tmp_path, fp16):
    tiny_model.save_pretrained(tmp_path / "w", fp16=fp16)
    if fp16:  # what was saved is what is compared: round the original through float16 too
        for p in list(tiny_model.parameters()) + [b for b in tiny_model.buffers() if b.is_floating_point()]:
            p.data = p.data.half().float()
    loaded = CVAEGAN.from_pretrained(str(tmp_path / "w"))
    for a, b in zip(_outputs(tiny_model), _outputs(loaded)):
        assert torch.equal(a, b)
    cfg = json.loads((tmp_path / "w" / "config.json").read_text())
    assert cfg["resolution"] == 32 and cfg["num_classes"] == 4 and cfg["class_names"][1] == "Square 1"
    assert cfg["package_version"] and set(cfg["files"]) == {
        "encoder.safetensors",
        "generator.safetensors",
        "classifier.safetensors",
    }
    assert loaded.discriminator is None


def test_saved_keys_have_no_wrapper_prefixes(tiny_model, tmp_path):
    tiny_model.generator = (
        torch.compile(tiny_model.generator, backend="eager") if hasattr(torch, "compile") else tiny_model.generator
    )
    hub.save_pretrained(tiny_model, tmp_path / "w")
    keys = load_file(str(tmp_path / "w" / "generator.safetensors")).keys()
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in keys)


def _resave(path: Path, change) -> None:
    state = load_file(str(path))
    change(state)
    save_file(state, str(path))


def _unsign(folder: Path) -> None:
    """Drop the recorded hashes so the strict key/shape checks (not the hash check) are exercised."""
    cfg = json.loads((folder / "config.json").read_text())
    cfg["files"] = {k: "" for k in cfg["files"]}
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "case,match",
    [
        ("missing", "missing tensors"),
        ("extra", "unexpected tensors"),
        ("shape", "wrong shapes"),
    ],
)
def test_strict_loading_rejects_mismatched_tensors(tiny_model, tmp_path, case, match):
    w = tmp_path / "w"
    tiny_model.save_pretrained(w)
    target = w / "generator.safetensors"
    if case == "missing":
        _resave(target, lambda s: s.pop("to_rgb.bias"))
    elif case == "extra":
        _resave(target, lambda s: s.__setitem__("extra.weight", torch.zeros(2)))
    else:
        _resave(target, lambda s: s.__setitem__("to_rgb.bias", torch.zeros(5)))
    _unsign(w)
    with pytest.raises(WeightsError, match=match) as err:
        CVAEGAN.from_pretrained(str(w))
    assert "generator.safetensors" in str(err.value)


def test_tampered_file_is_rejected_by_hash(tiny_model, tmp_path):
    w = tmp_path / "w"
    tiny_model.save_pretrained(w)
    _resave(w / "encoder.safetensors", lambda s: s["head.2.bias"].add_(1))
    with pytest.raises(WeightsError, match="encoder.safetensors: sha256 does not match"):
        CVAEGAN.from_pretrained(str(w))


def test_pickle_and_truncated_files_are_refused_without_unpickling(tiny_model, tmp_path):
    w = tmp_path / "w"
    tiny_model.save_pretrained(w)
    _unsign(w)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (w / "classifier.safetensors").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(WeightsError, match="classifier.safetensors: not a readable safetensors"):
        CVAEGAN.from_pretrained(str(w))
    assert not marker.exists()
    tiny_model.save_pretrained(w)
    _unsign(w)
    data = (w / "generator.safetensors").read_bytes()
    (w / "generator.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="generator.safetensors"):
        CVAEGAN.from_pretrained(str(w))


def test_future_config_and_bad_json_are_refused(tiny_model, tmp_path):
    w = tmp_path / "w"
    tiny_model.save_pretrained(w)
    cfg = json.loads((w / "config.json").read_text())
    (w / "config.json").write_text(json.dumps({**cfg, "format_version": 99}))
    with pytest.raises(WeightsError, match="newer than this cvaegan"):
        CVAEGAN.from_pretrained(str(w))
    (w / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match="not valid JSON"):
        CVAEGAN.from_pretrained(str(w))
    with pytest.raises(WeightsError, match="neither a weights folder nor a Hub repo id"):
        CVAEGAN.from_pretrained(str(tmp_path / "does-not-exist"))


# ---------------------------------------------------------------- the Hub path


@pytest.fixture()
def fake_hub(tiny_model, tmp_path):
    server = FakeHub()
    tiny_model.save_pretrained(tmp_path / "v1")
    torch.manual_seed(5)
    other = CVAEGAN(tiny_config(class_names=["a", "b", "c", "d"])).eval()
    other.save_pretrained(tmp_path / "v2")
    server.v1_commit = server.add_commit("owner/faces", tmp_path / "v1", ["v1.0"])
    server.v2_commit = server.add_commit("owner/faces", tmp_path / "v2", ["main"])
    server.start()
    yield server
    server.stop()


def test_hub_download_then_cache_with_server_stopped(fake_hub, tmp_path):
    cache = str(tmp_path / "cache")
    m = CVAEGAN.from_pretrained("owner/faces", endpoint=fake_hub.url, cache_dir=cache)
    assert m.config.class_names == ["a", "b", "c", "d"]  # main = the second commit
    assert "Hub owner/faces" in m.source
    assert any(p.endswith("/resolve/main/config.json") for _, p in fake_hub.requests)
    url = fake_hub.url
    fake_hub.stop()
    again = CVAEGAN.from_pretrained("owner/faces", endpoint=url, cache_dir=cache)
    for a, b in zip(_outputs(m), _outputs(again)):
        assert torch.equal(a, b)


def test_hub_cache_first_sends_no_request(fake_hub, tmp_path):
    cache = str(tmp_path / "cache")
    CVAEGAN.from_pretrained("owner/faces", endpoint=fake_hub.url, cache_dir=cache)
    n = len(fake_hub.requests)
    CVAEGAN.from_pretrained("owner/faces", endpoint=fake_hub.url, cache_dir=cache)
    assert len(fake_hub.requests) == n


def test_hub_revision_pin(fake_hub, tmp_path, tiny_model):
    cache = str(tmp_path / "cache")
    m = CVAEGAN.from_pretrained("owner/faces", revision="v1.0", endpoint=fake_hub.url, cache_dir=cache)
    assert m.config.class_names == tiny_model.config.class_names
    for a, b in zip(_outputs(m), _outputs(tiny_model)):
        assert torch.allclose(a, b, atol=1e-2)  # fp16 weights
    by_commit = CVAEGAN.from_pretrained(
        "owner/faces", revision=fake_hub.v1_commit, endpoint=fake_hub.url, cache_dir=cache
    )
    assert by_commit.config.class_names == tiny_model.config.class_names
    with pytest.raises(WeightsError, match="no revision 'nope'"):
        CVAEGAN.from_pretrained("owner/faces", revision="nope", endpoint=fake_hub.url, cache_dir=cache)


def test_unknown_repo_errors_and_resolver_falls_back(fake_hub, tmp_path, tiny_model, monkeypatch):
    cache = str(tmp_path / "cache")
    with pytest.raises(WeightsError, match="not found"):
        CVAEGAN.from_pretrained("owner/nope", endpoint=fake_hub.url, cache_dir=cache)
    bundled = tmp_path / "bundled"
    tiny_model.save_pretrained(bundled / "faces")
    monkeypatch.setattr(hub, "BUNDLED_DIR", bundled)
    res = resolve_weights("owner/nope", endpoint=fake_hub.url, cache_dir=cache)
    assert "bundled" in res.source and "owner/nope" in res.notice and "not found" in res.notice
    assert res.model.config.class_names == tiny_model.config.class_names
    with pytest.raises(WeightsError):
        resolve_weights("owner/nope", endpoint=fake_hub.url, cache_dir=cache, fallback=False)
    ok = resolve_weights("owner/faces", endpoint=fake_hub.url, cache_dir=cache)
    assert ok.notice == "" and ok.source.startswith("Hub owner/faces")
    assert resolve_weights(None).source == "bundled bundled/faces"  # <bundled dir name>/<data set>


def test_corrupted_download_is_reported_and_not_reused(fake_hub, tmp_path):
    cache = str(tmp_path / "cache")
    fake_hub.corrupt.add("generator.safetensors")
    with pytest.raises(WeightsError, match="generator.safetensors"):
        CVAEGAN.from_pretrained("owner/faces", endpoint=fake_hub.url, cache_dir=cache)
    fake_hub.corrupt.clear()  # the server is fixed: the next load must fetch a good copy
    m = CVAEGAN.from_pretrained("owner/faces", endpoint=fake_hub.url, cache_dir=cache)
    assert m.config.class_names == ["a", "b", "c", "d"]
    gets = [p for method, p in fake_hub.requests if method == "GET" and p.endswith("generator.safetensors")]
    assert len(gets) == 2


def test_hf_hub_offline_uses_cache_only(fake_hub, tmp_path):
    cache = str(tmp_path / "cache")
    CVAEGAN.from_pretrained("owner/faces", endpoint=fake_hub.url, cache_dir=cache)
    n = len(fake_hub.requests)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": cache, "HF_ENDPOINT": fake_hub.url}
    code = (
        "from cvaegan import CVAEGAN\n"
        "m = CVAEGAN.from_pretrained('owner/faces'); print(m.config.class_names)\n"
        "try:\n    CVAEGAN.from_pretrained('owner/other')\nexcept Exception as e:\n    print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "['a', 'b', 'c', 'd']" in out.stdout
    assert "ERR" in out.stdout and "not in the local cache" in out.stdout
    assert len(fake_hub.requests) == n  # offline means offline


def test_push_uploads_folder_and_model_card(tiny_model, tmp_path, monkeypatch):
    """`push` verifies the folder loads, creates the repo, adds a card and uploads the files
    (huggingface_hub's upload API recorded, no network)."""
    import huggingface_hub

    calls = []

    class RecordingApi:
        def __init__(self, token=None, endpoint=None):
            calls.append(("init", token, endpoint))

        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw))

        def upload_file(self, **kw):
            calls.append(("upload_file", kw["path_in_repo"], kw["path_or_fileobj"]))

        def upload_folder(self, **kw):
            calls.append(("upload_folder", kw["folder_path"], kw["allow_patterns"]))
            return type("Info", (), {"commit_url": "http://127.0.0.1/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    w = tmp_path / "w"
    tiny_model.save_pretrained(w)
    from cvaegan.cli import main

    assert main(["push", "--weights", str(w), "--repo", "me/shapes", "--token", "t0k"]) == 0
    names = [c[0] for c in calls]
    assert names == ["init", "create_repo", "upload_file", "upload_folder"]
    assert calls[1][1] == "me/shapes" and calls[2][1] == "README.md" and b"me/shapes" in calls[2][2]
    assert "*.safetensors" in calls[3][2]
    (w / "generator.safetensors").write_bytes(b"garbage")
    with pytest.raises(WeightsError):
        hub.push(w, "me/shapes")  # a folder that does not load is never published
