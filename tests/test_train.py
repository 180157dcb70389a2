"""The training loop: update order, gradient routing, a full step, resume, and a short real training run."""

import copy
import json
import math

import pytest
import torch
from torch import nn

from cvaegan import CVAEGAN, inference as I, losses as L, train as train_mod
from cvaegan.config import ConfigError, TrainConfig
from cvaegan.data import load_images
from cvaegan.seeds import step_generator
from cvaegan.train import Trainer, TrainError, train

from conftest import TRAINED_STEPS, record_optimizer_steps, tiny_config


def _batch(model, b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    r, k, zd = model.config.resolution, model.config.num_classes, model.config.z_dim
    x = torch.rand(b, 3, r, r, generator=g) * 2 - 1
    c = torch.randint(0, k, (b,), generator=g)
    noise = {
        "eps": torch.randn(b, zd, generator=g),
        "z_p": torch.randn(b, zd, generator=g),
        "c_p": torch.randint(0, k, (b,), generator=g),
    }
    return x, c, noise


def _trainer(**kw):
    torch.manual_seed(0)
    model = CVAEGAN(tiny_config())
    return Trainer(model, TrainConfig(batch_size=8, **kw), torch.device("cpu"))


def test_update_order_and_gradient_routing():
    """Optimisers step in the order C, D, G, E; at each step only that network holds gradients."""
    tr = _trainer()
    seen = record_optimizer_steps(tr)
    x, c, noise = _batch(tr.model)
    tr.train_step(x, c, step_generator(0, 0), noise)
    assert seen == [("C", ["C"]), ("D", ["D"]), ("G", ["G"]), ("E", ["E"])]


def test_classifier_is_trained_on_real_images_only():
    tr = _trainer()
    x, c, noise = _batch(tr.model)
    trained_inputs = []

    def hook(module, inputs):
        if any(p.requires_grad for p in module.parameters()):
            trained_inputs.append(inputs[0].detach().clone())

    tr.model.classifier.register_forward_pre_hook(hook)
    tr.train_step(x, c, step_generator(0, 0), noise)
    assert len(trained_inputs) == 1 and torch.equal(trained_inputs[0], x)


def test_generator_never_uses_the_gan_loss(monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("CVAE-GAN's generator must not be trained with -log D(G(z))")

    monkeypatch.setattr(L, "nonsaturating_generator_loss", forbidden)
    tr = _trainer()
    x, c, noise = _batch(tr.model)
    log = tr.train_step(x, c, step_generator(0, 0), noise)
    assert set(log) >= {"loss/C", "loss/D", "loss/G_recon", "loss/G_mean_fm_D", "loss/G_mean_fm_C", "loss/KL"}


def test_one_step_changes_all_four_networks_and_running_means():
    tr = _trainer(diffaugment="color,translation,cutout", ema_decay=0.9, grad_clip=1.0)
    before = {k: [p.detach().clone() for p in net.parameters()] for k, net in tr.nets.items()}
    x, c, noise = _batch(tr.model)
    tr.train_step(x, c, step_generator(0, 0), noise)
    for k, net in tr.nets.items():
        changed = any(not torch.equal(a, b) for a, b in zip(before[k], net.parameters()))
        assert changed, f"network {k} did not change"
    assert tr.means["d_real"].seen.all() and tr.means["d_fake"].seen.all()
    assert tr.means["c_real"].seen[c].all() and tr.means["c_fake"].seen[noise["c_p"]].all()
    assert tr.means["c_real"].seen.sum() == len(set(c.tolist()))
    assert tr.step == 1


def test_gradient_norms_are_logged_when_asked():
    tr = _trainer()
    x, c, noise = _batch(tr.model)
    assert not any(k.startswith("grad/") for k in tr.train_step(x, c, step_generator(0, 0), noise))
    tr.measure_grad_norms = True
    log = tr.train_step(x, c, step_generator(0, 1), noise)
    norms = {k: v for k, v in log.items() if k.startswith("grad/")}
    assert set(norms) == {f"grad/{n}" for n in tr.opt} and all(math.isfinite(v) and v > 0 for v in norms.values())
    # with clipping the norm before clipping is logged, and the update uses the clipped gradient
    clipped = _trainer(grad_clip=1e-6)
    clipped.measure_grad_norms = True
    assert all(
        v > 1e-6 for k, v in clipped.train_step(x, c, step_generator(0, 1), noise).items() if k.startswith("grad/")
    )


def test_auto_clip_scales_a_spike_down_to_k_times_the_running_mean(monkeypatch):
    monkeypatch.setattr(train_mod, "AUTO_CLIP_WARMUP", 3)
    tr = _trainer(grad_clip_auto=2.0)
    net = nn.Linear(4, 1, bias=False)

    def update(norm):
        net.weight.grad = torch.full_like(net.weight, norm / 2.0)  # 4 entries: total norm = `norm`
        before = float(tr._auto_clip("G@G", net))
        return before, float(net.weight.grad.norm())

    for _ in range(3):  # warm-up: measured, never clipped
        assert update(10.0) == pytest.approx((10.0, 10.0))
    assert update(15.0) == pytest.approx((15.0, 15.0))  # below 2 x mean (20): untouched
    mean = tr.norm_stats["G@G"]["mean"]
    before, after = update(1000.0)  # a spike
    assert before == pytest.approx(1000.0) and after == pytest.approx(2.0 * mean)
    assert tr.norm_stats["G@G"]["clipped"] == 1 and tr.clipped_updates() == {"G": 1}
    # the running mean moved by the clipped value, not by the spike
    assert tr.norm_stats["G@G"]["mean"] < 2.0 * mean
    # a non-finite gradient skips the update: no gradient left, so Adam does not move on its momentum
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    opt.step()  # Adam now holds momentum from the last (finite) gradient
    kept = net.weight.detach().clone()
    net.weight.grad = torch.full_like(net.weight, float("nan"))
    tr._auto_clip("G@G", net)
    assert net.weight.grad is None and tr.clipped_updates() == {"G": 2}
    opt.step()
    assert torch.equal(net.weight.detach(), kept)


def test_auto_clip_in_training_steps_and_checkpoint(monkeypatch):
    monkeypatch.setattr(train_mod, "AUTO_CLIP_WARMUP", 1)
    tr = _trainer(grad_clip_auto=3.0)
    x, c, noise = _batch(tr.model)
    for i in range(2):
        tr.train_step(x, c, step_generator(0, i), noise)
    assert tr.clipped_updates() == {k: 0 for k in tr.opt}
    for st in tr.norm_stats.values():  # as if every earlier gradient had been tiny: the next one is a spike
        st["mean"] = 1e-9
    tr.train_step(x, c, step_generator(0, 2), noise)
    assert tr.clipped_updates() == {k: 1 for k in tr.opt}
    assert all(st["updates"] == 3 for st in tr.norm_stats.values())
    again = _trainer(grad_clip_auto=3.0)
    again.load_state_dict(tr.state_dict())
    assert again.norm_stats == tr.norm_stats
    with pytest.raises(ConfigError, match="grad_clip_auto"):
        TrainConfig(grad_clip_auto=1.0)


@pytest.mark.parametrize("variant", ["cvae-gan", "fm-cgan"])
def test_resume_continues_exactly(shapes_dir, tmp_path, variant):
    """4 steps in one go == 2 steps, stop, resume for 2 more (same parameters, same metrics)."""
    data = load_images(shapes_dir, 32, progress=False)
    cfg = dict(
        batch_size=16, log_every=1, sample_every=0, checkpoint_every=2, ema_decay=0.5, variant=variant, val_fraction=0.2
    )
    train(data, tmp_path / "a", TrainConfig(steps=4, **cfg), tiny_config(), progress=False)
    train(data, tmp_path / "b", TrainConfig(steps=2, **cfg), tiny_config(), progress=False)
    with open(tmp_path / "b" / "metrics.jsonl", "a") as fh:  # rows a killed run logged after its checkpoint
        fh.write('{"step": 3, "loss/D": -1}\n')
    with pytest.raises(TrainError, match="--resume"):
        train(data, tmp_path / "b", TrainConfig(steps=4, **cfg), tiny_config(), progress=False)
    train(data, tmp_path / "b", TrainConfig(steps=4, **cfg), None, resume=True, progress=False)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    # each training process records its machine's speed reference with the clock: b started twice
    assert [m["step"] for m in a["clock"]["machines"]] == [0]
    assert [m["step"] for m in b["clock"]["machines"]] == [0, 2]
    assert all(m["conv_gflops"] > 0 and m["cpu"] for m in b["clock"]["machines"])
    for k in "CDGE":
        for name, t in a["nets"][k].items():
            assert torch.allclose(t.float(), b["nets"][k][name].float(), atol=1e-5), f"{k}.{name}"
    la = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lb] == [1, 2, 3, 4]
    assert la[-1]["loss/D"] == pytest.approx(lb[-1]["loss/D"], rel=1e-4)
    for key in ("ema", "ema_E", "proj"):
        if a[key] is not None:
            for name, t in a[key].items():
                assert torch.allclose(t.float(), b[key][name].float(), atol=1e-5), f"{key}.{name}"


@pytest.mark.parametrize(
    "variant,trained,untouched", [("cvae", "GE", "CD"), ("cgan", "DG", "CE"), ("fm-cgan", "DG", "CE")]
)
def test_ablation_variants_train_only_their_networks(variant, trained, untouched, monkeypatch):
    """Table 1 ablations: CVAE never touches D or C; the GAN variants never touch E or C; only the
    CGAN variant calls -log D(G(z)), and the class-conditional projection is trained with D."""
    tr = _trainer(variant=variant)
    before = {k: copy.deepcopy(v.state_dict()) for k, v in tr.nets.items()}
    proj_before = None if tr.proj is None else tr.proj.weight.detach().clone()
    calls = []
    orig = L.nonsaturating_generator_loss
    monkeypatch.setattr(L, "nonsaturating_generator_loss", lambda x: calls.append(1) or orig(x))
    x, c, noise = _batch(tr.model)
    log = tr.train_step(x, c, step_generator(0, 0), noise)
    changed = {
        k
        for k, v in tr.nets.items()
        if any(not torch.equal(t, before[k][n]) for n, t in v.state_dict().items() if t.is_floating_point())
    }
    assert set(trained) <= changed and not (set(untouched) & changed)
    assert bool(calls) == (variant == "cgan")
    assert all(torch.isfinite(torch.tensor(v)) for v in log.values())
    if proj_before is not None:
        assert not torch.equal(proj_before, tr.proj.weight)


def test_ema_exports_encoder_and_generator_pair(shapes_dir, tmp_path):
    """With --ema-decay the export holds the EMA of E (BatchNorm re-estimated on real images) beside
    the EMA of G, and the checkpoint keeps it for `cvaegan export`."""
    from cvaegan.train import export_checkpoint

    data = load_images(shapes_dir, 32, progress=False)
    cfg = TrainConfig(steps=3, batch_size=16, sample_every=0, checkpoint_every=3, ema_decay=0.5)
    out = train(data, tmp_path / "r", cfg, tiny_config(), progress=False)
    state = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert state["ema_E"] is not None
    live = state["nets"]["E"]
    assert any(not torch.equal(state["ema_E"][k], live[k]) for k in live if live[k].is_floating_point())
    exported = CVAEGAN.from_pretrained(str(out))
    again = CVAEGAN.from_pretrained(str(export_checkpoint(tmp_path / "r", tmp_path / "x")))
    for k, t in exported.encoder.state_dict().items():
        assert torch.allclose(t.float(), again.encoder.state_dict()[k].float(), atol=1e-3), k
        assert torch.allclose(t.float(), state["ema_E"][k].float(), atol=1e-2), k


def test_run_folder_contents(trained_export):
    run = trained_export.parent
    for name in ("train_config.json", "model_config.json", "metrics.jsonl", "checkpoint.pt", "split.json"):
        assert (run / name).is_file(), name
    assert (run / "samples" / f"step_{TRAINED_STEPS:07d}.png").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == TRAINED_STEPS and "loss/G_mean_fm_C" in rows[-1]
    every = json.loads((run / "train_config.json").read_text())["log_every"]
    on_schedule = [r for r in rows if r["step"] % every == 0]
    assert on_schedule and all({"grad/G", "grad/E", "grad/C", "grad/D"} <= set(r) for r in on_schedule)
    # the resume checkpoint loads without unpickling arbitrary objects
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert set(state["nets"]) == {"C", "D", "G", "E"} and state["step"] == TRAINED_STEPS


def test_short_training_learns_classes(trained_export, shapes_dir):
    """After a short run on coloured shapes, C recognises the real images and the samples of each
    class are recognised as that class (chance is 25%)."""
    model = CVAEGAN.from_pretrained(trained_export)
    data = load_images(shapes_dir, 32, progress=False)
    pred, _ = I.classify(model, I.uint8_to_float(data.images))
    real_acc = (pred == data.labels).float().mean().item()
    classes = [0, 1, 2, 3] * 8
    x = I.sample(model, classes, list(range(32)), batch_size=32)
    gen_pred, _ = I.classify(model, x)
    gen_acc = (gen_pred == torch.tensor(classes)).float().mean().item()
    assert real_acc > 0.9, real_acc
    assert gen_acc > 0.6, gen_acc


def test_batchnorm_recalibration_matches_prior_batch_statistics():
    """An EMA (or any) generator gets running statistics measured on prior samples: in eval mode it
    then behaves like train mode on a large prior batch, whatever stale statistics it had before."""
    from cvaegan.train import recalibrate_batchnorm

    torch.manual_seed(0)
    model = CVAEGAN(tiny_config())
    g = model.generator
    for m in g.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.fill_(5.0)  # stale, wrong statistics
            m.running_var.fill_(9.0)
    fixed = recalibrate_batchnorm(g, model.config, torch.device("cpu"), batches=32, batch_size=64)
    assert g.bn0.running_mean[0] == 5.0  # the original is untouched
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(512, 16, generator=gen)
    c = torch.randint(0, 4, (512,), generator=gen)
    with torch.no_grad():
        eval_out = fixed.eval()(z, c)
        train_out = copy.deepcopy(fixed).train()(z, c)
        stale_out = g.eval()(z, c)
    assert (eval_out - train_out).abs().mean() < 0.05
    assert (stale_out - train_out).abs().mean() > 0.1


def test_channels_last_trains_the_same_values_and_exports(shapes_dir, tmp_path):
    """The memory format is a speed choice only: 3 steps in channels_last give the same parameters and losses as
    in the contiguous layout (to float rounding), and the run exports and loads strictly."""
    from cvaegan.hub import load_pretrained
    from cvaegan.speed import use_channels_last

    assert use_channels_last("auto", torch.device("cuda")) and not use_channels_last("contiguous", torch.device("cuda"))
    assert use_channels_last("channels_last", torch.device("cpu"))
    data = load_images(shapes_dir, 32, progress=False)
    cfg = dict(steps=3, batch_size=16, log_every=1, sample_every=0, checkpoint_every=3, ema_decay=0.5)
    for layout in ("contiguous", "channels_last"):
        train(data, tmp_path / layout, TrainConfig(memory_format=layout, **cfg), tiny_config(), progress=False)
    a = torch.load(tmp_path / "contiguous" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "channels_last" / "checkpoint.pt", weights_only=True)
    w = b["nets"]["G"]
    assert any(t.dim() == 4 and not t.is_contiguous() for t in w.values())  # really channels_last
    for k in "CDGE":  # float rounding differs by layout; Adam scales a near-zero gradient's difference up to ~lr
        for name, t in a["nets"][k].items():
            assert torch.allclose(t.float(), b["nets"][k][name].float(), atol=1e-3), f"{k}.{name}"
    rows = [json.loads(line) for line in (tmp_path / "channels_last" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (tmp_path / "contiguous" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss/D"] == pytest.approx(ref[-1]["loss/D"], rel=1e-3)
    from cvaegan.cli import main

    assert main(["export", "--run", str(tmp_path / "channels_last"), "--out", str(tmp_path / "w")]) == 0
    model = load_pretrained(str(tmp_path / "w"))
    assert model.config.num_classes == tiny_config().num_classes


def test_lr_schedule_warm_up_then_constant_or_cosine():
    """--warmup-steps ramps the step size linearly from lr/N to lr over N steps; --lr-schedule cosine then falls to
    10% of lr at the last step; neither: constant."""
    f = train_mod.lr_factor
    assert [f(TrainConfig(steps=100), s) for s in (0, 50, 99)] == [1.0, 1.0, 1.0]
    warm = TrainConfig(steps=100, warmup_steps=4)
    assert [f(warm, s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cos = TrainConfig(steps=100, lr_schedule="cosine")
    assert f(cos, 0) == pytest.approx(1.0) and f(cos, 50) == pytest.approx(0.55) and f(cos, 100) == pytest.approx(0.1)
    assert f(cos, 500) == pytest.approx(0.1)  # a run resumed past its steps stays at the floor
    both = TrainConfig(steps=100, warmup_steps=10, lr_schedule="cosine")
    assert f(both, 0) == pytest.approx(0.1 * f(cos, 0)) and f(both, 60) == pytest.approx(f(cos, 60))


def test_cooldown_falls_linearly_over_the_last_steps_after_the_other_schedules():
    f = train_mod.lr_factor
    cool = TrainConfig(steps=100, cooldown_steps=4)
    assert [f(cool, s) for s in (0, 95, 96, 97, 98, 99)] == [1.0, 1.0, 1.0, 0.75, 0.5, 0.25]
    assert f(cool, 150) == 0.25  # a run resumed past its steps stays at the last step's size, never 0
    both = TrainConfig(steps=100, cooldown_steps=50, lr_schedule="cosine")
    assert f(both, 75) == pytest.approx(0.5 * f(TrainConfig(steps=100, lr_schedule="cosine"), 75))
    with pytest.raises(ConfigError, match="cooldown_steps"):
        TrainConfig(steps=100, cooldown_steps=101)
    with pytest.raises(ConfigError, match="cooldown_steps"):
        TrainConfig(steps=100, cooldown_steps=-1)


def test_train_step_sets_every_optimisers_step_size_from_the_schedule():
    tr = _trainer(lr=1e-3, warmup_steps=4, d_lr_mult=2.0)
    x, c, noise = _batch(tr.model)
    for step, factor in enumerate((0.25, 0.5)):
        tr.train_step(x, c, step_generator(0, step), noise)
        lrs = {name: opt.param_groups[0]["lr"] for name, opt in tr.opt.items()}
        assert lrs == pytest.approx({"E": 1e-3 * factor, "G": 1e-3 * factor, "C": 1e-3 * factor, "D": 2e-3 * factor})
