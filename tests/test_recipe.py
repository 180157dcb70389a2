"""The recipe options (presets, stratified batches, spectral norm, R1, joint G/E, warm starts, CPU budgets)
and the `train` command's options generated from the config fields."""

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from test_train import _batch

from cvaegan import CVAEGAN, cli
from cvaegan.config import PRESETS, ConfigError, ModelConfig, TrainConfig
from cvaegan.data import load_images
from cvaegan.seeds import step_generator
from cvaegan.train import Trainer, TrainError, stratified_indices, train

from conftest import record_optimizer_steps, tiny_config


def _trainer(mcfg=None, **kw):
    torch.manual_seed(0)
    return Trainer(CVAEGAN(mcfg or tiny_config()), TrainConfig(batch_size=8, **kw), torch.device("cpu"))


def test_r1_phase_runs_only_when_asked_and_only_on_d():
    tr = _trainer(r1_gamma=0.5, r1_every=2)
    seen = record_optimizer_steps(tr)
    x, c, noise = _batch(tr.model)
    log = tr.train_step(x, c, step_generator(0, 0), noise)
    assert seen == [("C", ["C"]), ("D", ["D"]), ("D", ["D"]), ("G", ["G"]), ("E", ["E"])]
    assert log["loss/D_r1"] > 0
    seen.clear()
    log = tr.train_step(x, c, step_generator(0, 1), noise)  # step 1: not an R1 step
    assert [s[0] for s in seen] == ["C", "D", "G", "E"] and "loss/D_r1" not in log
    assert "loss/D_r1" not in _trainer().train_step(x, c, step_generator(0, 0), noise)


def test_r1_penalty_is_the_squared_input_gradient():
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    w = torch.randn(3, 8, 8)
    logits = (x * w).sum((1, 2, 3))  # d logit / d x = w for every sample
    from cvaegan.losses import r1_penalty

    assert r1_penalty(logits, x).item() == pytest.approx(w.pow(2).sum().item(), rel=1e-5)


def test_lecam_penalty_against_the_anchors():
    from cvaegan.losses import LeCamAnchors, lecam_penalty

    anchors = LeCamAnchors()
    anchors.real.fill_(1.0)  # anchor of the real logits; the fake anchor stays 0
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.0, 3.0])
    # real: mean(relu([2, -1] - 0)^2) = 2; generated: mean(relu(1 - [0, 3])^2) = 0.5
    assert lecam_penalty(real, fake, anchors).item() == pytest.approx(2.5)
    anchors.decay = 0.5
    anchors.update(real, fake)  # lerp halfway to the batch means 0.5 and 1.5
    assert (anchors.real.item(), anchors.fake.item()) == pytest.approx((0.75, 0.75))


def test_lecam_enters_only_d_s_phase_and_its_anchors_resume():
    tr = _trainer(lecam_weight=0.3)
    seen = record_optimizer_steps(tr)
    x, c, noise = _batch(tr.model)
    log = tr.train_step(x, c, step_generator(0, 0), noise)
    assert seen == [("C", ["C"]), ("D", ["D"]), ("G", ["G"]), ("E", ["E"])]
    assert log["loss/D_lecam"] >= 0 and tr.lecam.real.item() != 0 and tr.lecam.fake.item() != 0
    state = tr.state_dict()
    again = _trainer(lecam_weight=0.3)
    again.load_state_dict(state)
    assert again.lecam.real.item() == tr.lecam.real.item() and again.lecam.fake.item() == tr.lecam.fake.item()
    off = _trainer()
    log = off.train_step(x, c, step_generator(0, 0), noise)
    assert "loss/D_lecam" not in log and off.lecam.real.item() == 0 == off.lecam.fake.item()
    with pytest.raises(ValueError, match="lecam_weight"):
        TrainConfig(lecam_weight=-1.0)


def test_std_feature_matching_is_the_gap_between_standard_deviations():
    from cvaegan.losses import std_feature_matching

    # group 0: real std 2 in both dims (E[f] = 0, E[f^2] = 4), generated std 1 (E[f] = 1, E[f^2] = 2) -> 1/2 (1 + 1)
    # group 1: equal spreads at different means -> 0; group 2: left out by `present`
    mean_r, sq_r = (
        torch.tensor([[0.0, 0.0], [5.0, 5.0], [0.0, 0.0]]),
        torch.tensor([[4.0, 4.0], [26.0, 26.0], [9.0, 9.0]]),
    )
    mean_f, sq_f = (
        torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]),
        torch.tensor([[2.0, 2.0], [1.0, 1.0], [0.0, 0.0]]),
    )
    present = torch.tensor([True, True, False])
    assert std_feature_matching(mean_r, sq_r, mean_f, sq_f, present).item() == pytest.approx(1.0, abs=1e-3)
    # a collapsed set (every sample alike) is pulled apart towards the real spread; the mean term alone has no pull
    real = torch.randn(256, 4) * 3.0
    fake = (torch.randn(256, 4) * 0.01).requires_grad_(True)
    opt = torch.optim.SGD([fake], lr=0.1)
    everyone = torch.ones(1, dtype=torch.bool)
    for _ in range(300):
        opt.zero_grad()
        loss = std_feature_matching(
            real.mean(0, keepdim=True),
            real.pow(2).mean(0, keepdim=True),
            fake.mean(0, keepdim=True),
            fake.pow(2).mean(0, keepdim=True),
            everyone,
        )
        (loss * 256).backward()
        opt.step()
    assert fake.detach().std(0) == pytest.approx(real.std(0), rel=0.05)


def test_std_matching_enters_g_s_loss_and_its_moments_resume():
    # lambda2 = 0: G's loss is the feature-matching terms alone, so the new term's share is visible in float32
    off = _trainer(stratify=4, lambda2=0.0)
    x, c, noise = _batch(off.model)
    c_same = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    noise["c_p"] = c_same
    log_off = off.train_step(x, c_same, step_generator(0, 0), noise)
    assert "loss/G_std_fm_D" not in log_off and not any(m.seen.any() for m in off.moments.values())
    on = _trainer(stratify=4, lambda2=0.0, std_matching=10.0)
    seen = record_optimizer_steps(on)
    log = on.train_step(x, c_same, step_generator(0, 0), noise)
    assert seen == [("C", ["C"]), ("D", ["D"]), ("G", ["G"]), ("E", ["E"])]
    assert log["loss/G_std_fm_D"] > 0 and log["loss/G_std_fm_C"] > 0
    assert log["loss/G_mean_fm_C"] == pytest.approx(log_off["loss/G_mean_fm_C"])  # same networks, same batch
    t = on.tcfg
    means = t.lambda3 * log["loss/G_mean_fm_D"] + t.lambda4 * log["loss/G_mean_fm_C"]
    stds = t.lambda3 * log["loss/G_std_fm_D"] + t.lambda4 * log["loss/G_std_fm_C"]
    assert log["loss/G"] == pytest.approx(means + 10.0 * stds, rel=1e-4)
    moved = [not torch.equal(a, b) for a, b in zip(on.nets["G"].parameters(), off.nets["G"].parameters())]
    assert any(moved)  # the term reaches G's update
    assert all(m.seen.all() for m in on.moments.values())  # every class of this batch, and D's one group
    # E[f^2] >= E[f]^2 in every stored estimate
    for key in ("d_real", "d_fake", "c_real", "c_fake"):
        assert (on.moments[key].mean + 1e-5 >= on.means[key].mean.pow(2)).all()
    again = _trainer(stratify=4, lambda2=0.0, std_matching=10.0)
    again.load_state_dict(on.state_dict())
    assert torch.equal(again.moments["c_fake"].mean, on.moments["c_fake"].mean)
    older = {k: v for k, v in on.state_dict().items() if k != "moments"}  # a checkpoint from before the option
    fresh = _trainer(stratify=4, lambda2=0.0, std_matching=10.0)
    fresh.load_state_dict(older)
    assert not any(m.seen.any() for m in fresh.moments.values())
    with pytest.raises(ValueError, match="std_matching"):
        TrainConfig(std_matching=-1.0)


def test_joint_ge_is_one_phase_for_g_and_e_and_the_rest_stays_routed():
    tr = _trainer(joint_ge=True)
    seen = record_optimizer_steps(tr)
    x, c, noise = _batch(tr.model)
    log = tr.train_step(x, c, step_generator(0, 0), noise)
    # one backward: G's and E's optimisers both step on the same gradients, C and D hold none
    assert seen == [("C", ["C"]), ("D", ["D"]), ("G", ["E", "G"]), ("E", ["E", "G"])]
    assert {"loss/G_recon", "loss/G_mean_fm_D", "loss/G_mean_fm_C", "loss/KL"} <= set(log)


def test_joint_ge_gives_g_the_same_gradient_as_the_paper_order():
    """G's gradient does not depend on whether E's phase is joint (E's comes through the pre-update G)."""
    grads = {}
    for joint in (False, True):
        tr = _trainer(joint_ge=joint)
        x, c, noise = _batch(tr.model)
        captured = []
        orig = tr.opt["G"].step
        tr.opt["G"].step = lambda *a, _o=orig, **k: (
            captured.append([p.grad.clone() for p in tr.nets["G"].parameters()]) or _o(*a, **k)
        )
        tr.train_step(x, c, step_generator(0, 0), noise)
        grads[joint] = captured[0]
    for a, b in zip(grads[False], grads[True]):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)


def test_warm_start_steps_train_c_and_a_plain_cvae_only():
    tr = _trainer(pretrain_steps=1)
    seen = record_optimizer_steps(tr)
    d_before = [p.detach().clone() for p in tr.nets["D"].parameters()]
    x, c, noise = _batch(tr.model)
    log = tr.train_step(x, c, step_generator(0, 0), noise)
    assert seen == [("C", ["C"]), ("G", ["G"]), ("E", ["E"])]
    assert all(torch.equal(a, b) for a, b in zip(d_before, tr.nets["D"].parameters()))
    assert "loss/D" not in log and "loss/C" in log
    seen.clear()
    tr.train_step(x, c, step_generator(0, 1), noise)  # after the warm start: the full method
    assert [s[0] for s in seen] == ["C", "D", "G", "E"]


def test_spectral_norm_is_active_when_asked():
    torch.manual_seed(0)
    d = CVAEGAN(tiny_config(spectral_norm=True, d_norm="none")).discriminator
    x = torch.randn(8, 3, 32, 32)
    for _ in range(30):  # power iterations run in training mode
        d(x)
    d.eval()
    convs = [m for m in d.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert convs and all(torch.nn.utils.parametrize.is_parametrized(m, "weight") for m in convs)
    for m in convs:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), 2).item()
        assert sigma == pytest.approx(1.0, abs=0.05)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())
    plain = CVAEGAN(tiny_config()).discriminator
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in plain.modules())


def test_class_batchnorm_starts_plain_and_then_carries_the_class_to_every_layer():
    from cvaegan.models import ClassBatchNorm

    torch.manual_seed(0)
    g = CVAEGAN(tiny_config(g_cond="cbn")).generator
    cbns = [m for m in g.modules() if isinstance(m, ClassBatchNorm)]
    assert len(cbns) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in CVAEGAN(tiny_config()).generator.modules())
    h = torch.randn(6, cbns[0].bn.num_features, 4, 4)
    e = torch.randn(6, 8)
    plain = torch.nn.functional.batch_norm(h, None, None, training=True)
    assert torch.allclose(cbns[0](h, e), plain, atol=1e-5)  # zero-initialised gain and bias: a plain BN
    # a G step trains the class maps, and then the class changes what every layer's BN hands on
    tr = _trainer(tiny_config(g_cond="cbn"))
    x, c, noise = _batch(tr.model)
    for i in range(2):
        tr.train_step(x, c, step_generator(0, i), noise)
    cbns = [m for m in tr.model.generator.modules() if isinstance(m, ClassBatchNorm)]
    assert all(m.gain.weight.abs().sum() > 0 and m.bias.weight.abs().sum() > 0 for m in cbns)
    g = tr.model.generator.eval()
    z = torch.randn(1, 16).repeat(2, 1)
    with torch.no_grad():
        a, b = g(z, torch.tensor([0, 1]))
        one_hot_a = g(z[:1], torch.nn.functional.one_hot(torch.tensor([0]), 4).float())
    assert (a - b).abs().mean() > 1e-3
    assert torch.allclose(one_hot_a[0], a, atol=1e-5)  # soft labels take the same path as indices


@pytest.mark.parametrize("training", [False, True])
def test_concat_generator_converts_to_class_batchnorm_exactly(training):
    from cvaegan.models import Generator, generator_state_to_cbn

    torch.manual_seed(0)
    cfg = tiny_config()
    g = Generator(cfg)
    for m in g.modules():  # a trained-looking BN: gains, biases and running statistics away from their init
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    converted = Generator(dataclasses.replace(cfg, g_cond="cbn"))
    converted.load_state_dict(generator_state_to_cbn(g.state_dict(), cfg), strict=True)
    g.train(training)
    converted.train(training)
    z, c = torch.randn(5, 16), torch.tensor([0, 1, 2, 3, 1])
    with torch.no_grad():
        assert torch.allclose(converted(z, c), g(z, c), atol=1e-5)


def _warm_vs_fresh(shapes_dir, tmp_path, source_steps: int, mcfg, **kw) -> tuple[dict, dict, Path]:
    """Train a source run for `source_steps`, then one step of `mcfg` warm-started from its export and one
    from scratch. Returns (the source's last log, {"warm": first log, "fresh": first log}, the warm export)."""
    data = load_images(shapes_dir, 32, progress=False)
    base = dict(batch_size=16, lr=1e-3, log_every=1, sample_every=0, device="cpu")
    source = TrainConfig(steps=source_steps, checkpoint_every=source_steps, **base)
    export = train(data, tmp_path / "source", source, tiny_config(), progress=False)
    last = json.loads((tmp_path / "source" / "metrics.jsonl").read_text().splitlines()[-1])
    first = {}
    for name, init in (("warm", export), ("fresh", None)):
        rows = []
        train(
            data,
            tmp_path / name,
            TrainConfig(steps=1, checkpoint_every=1, **base),
            mcfg,
            progress=False,
            init_from=init,
            on_step=lambda s, log: rows.append(dict(log)),
            **(kw if init is not None else {}),
        )
        first[name] = rows[0]
    return last, first, tmp_path / "warm" / "export"


@pytest.mark.slow  # trains a tiny model
def test_warm_start_with_g_cond_cbn_converts_a_released_concat_model(shapes_dir, tmp_path):
    last, first, out = _warm_vs_fresh(shapes_dir, tmp_path, 30, tiny_config(g_cond="cbn"), init_g_cond="cbn")
    assert CVAEGAN.read_config(out).g_cond == "cbn"
    # went on from the released G, not from scratch
    assert abs(first["warm"]["psnr/recon"] - last["psnr/recon"]) < abs(
        first["fresh"]["psnr/recon"] - last["psnr/recon"]
    )
    # without init_g_cond the weights' architecture wins, whatever the given model config says
    data = load_images(shapes_dir, 32, progress=False)
    one = TrainConfig(steps=1, checkpoint_every=1, batch_size=16, sample_every=0, device="cpu")
    again = train(data, tmp_path / "c", one, tiny_config(), progress=False, init_from=out)
    assert CVAEGAN.read_config(again).g_cond == "cbn"
    source = tmp_path / "source" / "export"
    kept = train(data, tmp_path / "d", one, tiny_config(g_cond="cbn"), progress=False, init_from=source)
    assert CVAEGAN.read_config(kept).g_cond == "concat"


@pytest.mark.parametrize("c_augment", [False, True])
def test_c_augment_trains_c_on_augmented_photos_only_when_asked(c_augment):
    tr = _trainer(c_augment=c_augment, diffaugment="color,translation,cutout")
    x, c, noise = _batch(tr.model)
    seen = []
    tr.model.classifier.register_forward_pre_hook(
        lambda mod, args: seen.append(args[0].detach().clone()) if mod.training else None
    )
    tr.train_step(x, c, step_generator(0, 0), noise)
    assert len(seen) == 1  # C's own phase; elsewhere C is a fixed feature extractor in eval mode
    assert seen[0].shape == x.shape and torch.equal(seen[0], x) != c_augment


def test_c_label_smoothing_keeps_c_loss_off_zero():
    """--c-label-smoothing: a C that is certain and right still has a loss (and a gradient) to learn from."""
    from cvaegan.losses import classifier_loss

    labels = torch.tensor([0, 2])
    certain = torch.nn.functional.one_hot(labels, 4).float() * 40.0  # p(c_r) = 1 to float precision
    assert classifier_loss(certain, labels).item() < 1e-6
    # the smoothed target puts 0.9 + 0.1/4 on c_r and 0.1/4 on each other class: far from certain, a high loss
    assert classifier_loss(certain, labels, 0.1).item() == pytest.approx(0.075 * 40.0, rel=1e-4)
    logits = certain.clone().requires_grad_(True)
    classifier_loss(logits, labels, 0.1).backward()
    assert logits.grad.abs().max() > 0.01
    with pytest.raises(ConfigError, match="c_label_smoothing"):
        TrainConfig(c_label_smoothing=1.0)
    # the trainer's C phase uses it: the logged loss/C is the smoothed cross-entropy of C's logits
    for smoothing in (0.0, 0.3):
        tr = _trainer(c_label_smoothing=smoothing)
        x, c, noise = _batch(tr.model)
        seen = []
        tr.model.classifier.register_forward_hook(
            lambda mod, args, out: seen.append(out[0].detach().clone()) if mod.training else None
        )
        log = tr.train_step(x, c, step_generator(0, 0), noise)
        want = torch.nn.functional.cross_entropy(seen[0], c, label_smoothing=smoothing)
        assert log["loss/C"] == pytest.approx(want.item(), rel=1e-5)


def test_class_batchnorm_weights_round_trip_strictly(tmp_path):
    torch.manual_seed(0)
    m = CVAEGAN(tiny_config(g_cond="cbn")).eval()
    for mod in m.generator.modules():
        if isinstance(mod, torch.nn.Linear):
            torch.nn.init.normal_(mod.weight, std=0.1)
    m.save_pretrained(tmp_path / "w", fp16=False)
    assert json.loads((tmp_path / "w" / "config.json").read_text())["g_cond"] == "cbn"
    back = CVAEGAN.from_pretrained(tmp_path / "w")
    z, c = torch.randn(3, 16), torch.tensor([0, 2, 3])
    with torch.no_grad():
        assert torch.allclose(back.generator(z, c), m.generator(z, c), atol=1e-5)
    cfg = json.loads((tmp_path / "w" / "config.json").read_text())
    cfg["g_cond"] = "concat"  # a layout that does not match the tensors must not load
    (tmp_path / "w" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(Exception, match="generator"):
        CVAEGAN.from_pretrained(tmp_path / "w")


def test_selfsup_targets_are_the_whole_photo_and_the_chosen_quarter():
    from cvaegan.models import selfsup_targets

    x = torch.zeros(2, 3, 64, 64)
    for q, (top, left) in enumerate([(0, 0), (0, 32), (32, 0), (32, 32)]):
        x[..., top : top + 32, left : left + 32] = q + 1.0
    for q in range(4):
        whole, part = selfsup_targets(x, q)
        assert whole.shape == part.shape == (2, 3, 32, 32)
        assert torch.all(part == q + 1.0)
        assert torch.allclose(whole[..., :16, :16], torch.ones(1)) and torch.allclose(
            whole[..., 16:, 16:], torch.full((1,), 4.0)
        )


@pytest.mark.parametrize("quarter", range(4))
def test_selfsup_decoders_read_the_8x8_map_and_the_chosen_quarter_of_the_16x16_map(quarter):
    torch.manual_seed(0)
    d = CVAEGAN(tiny_config(d_selfsup=True)).discriminator.eval()
    got, maps = {}, {}
    d.decode_whole.register_forward_hook(lambda mod, args, out: got.update(whole=args[0]))
    d.decode_part.register_forward_hook(lambda mod, args, out: got.update(part=args[0]))
    for block in d.trunk.net:
        block.register_forward_hook(lambda mod, args, out: maps.setdefault(out.shape[-1], out))
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        logit, f, whole, part = d(x, decode=3, quarter=quarter)
        plain_logit, plain_f = d(x)
    assert torch.allclose(logit, plain_logit) and torch.allclose(f, plain_f)  # decoding changes nothing else
    assert whole.shape == part.shape == (3, 3, 32, 32)
    assert torch.equal(got["whole"], maps[8][:3])
    top, left = (quarter // 2) * 8, (quarter % 2) * 8
    assert torch.equal(got["part"], maps[16][:3, :, top : top + 8, left : left + 8])


def test_selfsup_discriminator_round_trips_strictly(tmp_path):
    torch.manual_seed(0)
    m = CVAEGAN(tiny_config(d_selfsup=True)).eval()
    m.save_pretrained(tmp_path / "w", fp16=False, include_discriminator=True)
    back = CVAEGAN.from_pretrained(tmp_path / "w", with_discriminator=True)
    assert back.config.d_selfsup
    for k, v in m.discriminator.state_dict().items():
        assert torch.equal(back.discriminator.state_dict()[k], v), k
    cfg = json.loads((tmp_path / "w" / "config.json").read_text())
    cfg["d_selfsup"] = False  # D's file holds decoders this config does not build: refused
    (tmp_path / "w" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(Exception, match="discriminator"):
        CVAEGAN.from_pretrained(tmp_path / "w", with_discriminator=True)
    assert not CVAEGAN.from_pretrained(tmp_path / "w").config.d_selfsup  # sampling never needs D


def test_selfsup_discriminator_rebuilds_reals_in_its_own_phase_only():
    tr = _trainer(tiny_config(d_selfsup=True))
    d = tr.model.discriminator
    decoders = {k: v.detach().clone() for k, v in d.state_dict().items() if k.startswith("decode_")}
    assert decoders
    seen = record_optimizer_steps(tr)
    decoded = []
    d.decode_part.register_forward_hook(lambda mod, args, out: decoded.append(args[0].shape[0]))
    x, c, noise = _batch(tr.model)
    log = tr.train_step(x, c, step_generator(0, 0), noise)
    assert seen == [("C", ["C"]), ("D", ["D"]), ("G", ["G"]), ("E", ["E"])]  # still one network per phase
    assert log["loss/D_selfsup"] > 0
    assert decoded == [x.shape[0]]  # once per step, in D's phase, the real photos only
    after = d.state_dict()
    assert all(not torch.equal(after[k], v) for k, v in decoders.items() if k.endswith(".weight") and v.dim() == 4)
    plain = _trainer()
    assert "loss/D_selfsup" not in plain.train_step(x, c, step_generator(0, 0), noise)
    with pytest.raises(ValueError, match="d_selfsup"):
        plain.model.discriminator(x, decode=2)


@pytest.mark.parametrize("norm,layer", [("group", torch.nn.GroupNorm), ("none", None), ("batch", torch.nn.BatchNorm2d)])
def test_classifier_and_discriminator_normalisation(norm, layer):
    m = CVAEGAN(tiny_config(d_norm=norm, c_norm=norm))
    for net in (m.discriminator, m.classifier):
        kinds = {type(x) for x in net.modules() if isinstance(x, (torch.nn.GroupNorm, torch.nn.BatchNorm2d))}
        assert kinds == ({layer} if layer else set())
        logits, f = net(torch.randn(2, 3, 32, 32))
        assert f.shape == (2, m.config.feature_dim)


def test_stratified_indices_are_stratified():
    labels = torch.arange(10).repeat_interleave(torch.tensor([5, 1, 7, 3, 0, 9, 4, 4, 6, 2]))
    by_class = [torch.nonzero(labels == c).flatten() for c in range(10)]
    for step in range(20):
        idx = stratified_indices(by_class, 12, 3, seed=0, step=step)
        lab = labels[idx].view(3, 4)
        assert (lab == lab[:, :1]).all(), "each group of 4 is one class"
        assert len(set(lab[:, 0].tolist())) == 3, "three different classes"
        assert 4 not in lab, "a class without images is never drawn"
    assert torch.equal(stratified_indices(by_class, 12, 3, 0, 5), stratified_indices(by_class, 12, 3, 0, 5))


@pytest.mark.slow  # trains a tiny model
def test_training_batches_and_prior_batches_share_stratified_classes(shapes_dir, tmp_path, monkeypatch):
    data = load_images(shapes_dir, 32, progress=False)
    seen = []
    orig = Trainer.train_step

    def spy(self, x, c, gen, noise):
        seen.append((c.clone(), noise["c_p"].clone()))
        return orig(self, x, c, gen, noise)

    monkeypatch.setattr(Trainer, "train_step", spy)
    tcfg = TrainConfig(steps=3, batch_size=8, stratify=2, sample_every=0, checkpoint_every=3, device="cpu")
    train(data, tmp_path / "run", tcfg, tiny_config(), progress=False)
    for c, c_p in seen:
        assert torch.equal(c, c_p)
        assert len(set(c[:4].tolist())) == 1 and len(set(c[4:].tolist())) == 1 and c[0] != c[4]


def test_every_config_field_has_an_option_and_every_option_a_field():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers()
    p = cli._train_parser(sub)
    dests = {a.dest for a in p._actions if a.dest != "help"}
    dests = {("betas" if d.startswith("betas_") else d) for d in dests}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    fields |= {f.name for f in dataclasses.fields(ModelConfig) if f.metadata.get("cli", True)}
    assert dests - set(cli.TRAIN_RUN_OPTIONS) == fields
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("help"), f"{f.name} has no help text"


def test_presets_and_explicit_options(tmp_path):
    ap = argparse.ArgumentParser(prog="cvaegan")
    sub = ap.add_subparsers(dest="command")
    cli._train_parser(sub)
    a = ap.parse_args(
        [
            "train",
            "--data",
            "d",
            "--out",
            "o",
            "--preset",
            "v1",
            "--stratify",
            "4",
            "--beta2",
            "0.99",
            "--no-fp16-export",
        ]
    )
    tcfg, mcfg = cli.train_configs(a, num_classes=5)
    assert tcfg.preset == "v1" and tcfg.batch_size == 32 and tcfg.diffaugment == "translation,color"
    assert tcfg.stratify == 4 and tcfg.betas == (0.5, 0.99) and tcfg.export_fp16 is False
    assert mcfg.resolution == 64 and mcfg.base_channels == 16 and mcfg.d_norm == "batch"  # the bundled width
    a = ap.parse_args(["train", "--data", "d", "--out", "o", "--resolution", "32"])
    tcfg, mcfg = cli.train_configs(a, num_classes=5)
    assert tcfg == TrainConfig.from_preset("v3") and tcfg.preset == "v3" and mcfg.base_channels == 64
    assert mcfg.g_cond == "cbn"  # the default recipe's G takes the class in every layer
    a = ap.parse_args(["train", "--data", "d", "--out", "o", "--preset", "v2"])
    assert cli.train_configs(a, num_classes=5)[1].g_cond == "concat"  # the second weights' recipe, reproducible
    a = ap.parse_args(["train", "--data", "d", "--out", "o", "--g-cond", "concat"])
    assert cli.train_configs(a, num_classes=5)[1].g_cond == "concat"  # an explicit option wins over the preset
    for name, values in PRESETS.items():
        assert TrainConfig.from_preset(name).preset == name
        assert all(getattr(TrainConfig.from_preset(name), k) == v for k, v in values.items())


def test_default_width_at_64px_makes_a_folder_release_accepts(tmp_path):
    """A 64-px run with train's default width (base 16), 264 classes (more than any bundled data set), exports a
    weights folder, D and running means included, that passes release's size limits; base 32, the default before
    2026-12-06, did not (about 27 MB for 95 birds), so a user's first release after hours of training was refused."""
    from cvaegan.hub import save_pretrained
    from cvaegan.release import ReleaseError, check_folder_size

    def export(base: int | None, folder: Path) -> None:
        kw = {} if base is None else {"base_channels": base}
        tr = Trainer(CVAEGAN(ModelConfig.for_resolution(64, 264, **kw)), TrainConfig(), torch.device("cpu"))
        save_pretrained(tr.export_model(), folder, include_discriminator=True, running_means=tr.means)

    export(None, tmp_path / "default")
    assert json.loads((tmp_path / "default" / "config.json").read_text())["base_channels"] == 16
    assert check_folder_size(tmp_path / "default") > 10 * 2**20  # the whole folder was written (about 18 MB)
    export(32, tmp_path / "base32")
    with pytest.raises(ReleaseError, match="over the limits"):
        check_folder_size(tmp_path / "base32")


def test_old_run_configs_keep_the_recipe_they_trained_with():
    """train_config.json written before presets existed: the options added since are off on resume."""
    old = {
        k: v
        for k, v in TrainConfig(batch_size=16).to_dict().items()
        if k
        not in (
            "preset",
            "stratify",
            "r1_gamma",
            "joint_ge",
            "pretrain_steps",
            "d_lr_mult",
            "budget_minutes",
            "snapshot_minutes",
            "export_discriminator",
        )
    }
    t = TrainConfig.from_dict(json.loads(json.dumps(old)))
    assert (t.preset, t.stratify, t.r1_gamma, t.joint_ge, t.pretrain_steps, t.export_discriminator) == (
        "v1",
        0,
        0.0,
        False,
        0,
        False,
    )
    assert t.batch_size == 16


@pytest.mark.slow  # trains a tiny model
def test_cpu_budget_stops_the_run_and_keeps_snapshots(shapes_dir, tmp_path):
    data = load_images(shapes_dir, 32, progress=False)
    tcfg = TrainConfig(
        steps=10**6,
        batch_size=8,
        budget_minutes=0.02,
        snapshot_minutes="0.005,0.02",
        sample_every=0,
        checkpoint_every=1000,
        log_every=1000,
        device="cpu",
    )
    export = train(data, tmp_path / "run", tcfg, tiny_config(), progress=False)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    clock = state["clock"]
    assert clock["cpu_s"] / 60 / clock["threads"] >= 0.02 and clock["images"] == 8 * state["step"]
    snaps = sorted(p.name for p in (tmp_path / "run" / "snapshots").iterdir())
    assert snaps == ["minute_0.005.pt", "minute_0.02.pt"]
    assert list((tmp_path / "run" / "samples").glob("*.png")), "a run writes a sample grid at its end"
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == state["step"] and rows[-1]["clock/images"] == clock["images"]
    assert (export / "discriminator.safetensors").is_file() and (export / "running_means.safetensors").is_file()


@pytest.mark.slow  # trains a tiny model
def test_steps_ending_a_budgeted_run_first_is_said(shapes_dir, tmp_path, capsys):
    """A budget run that reaches --steps first says so and how to go on (a faces run once stopped silently at
    the default 20,000 steps, 50 CPU-minutes short of its budget)."""
    data = load_images(shapes_dir, 32, progress=False)
    tcfg = TrainConfig(steps=2, batch_size=8, budget_minutes=60, sample_every=0, log_every=1000, device="cpu")
    train(data, tmp_path / "run", tcfg, tiny_config(), progress=False)
    out = capsys.readouterr().out
    assert "stopped at --steps 2 after" in out and "of its 60 CPU-minutes" in out and "--steps 4" in out
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 2
    capsys.readouterr()
    tcfg = TrainConfig(steps=10**6, batch_size=8, budget_minutes=0.002, sample_every=0, log_every=1000, device="cpu")
    train(data, tmp_path / "run2", tcfg, tiny_config(), progress=False)
    assert "stopped at --steps" not in capsys.readouterr().out, "a run the budget ended says nothing"


@pytest.mark.slow  # trains a tiny model
def test_warm_start_continues_from_the_released_networks(shapes_dir, tmp_path):
    """--init-from: the first step's losses are close to the source run's last ones, not to a fresh run's."""
    last, logs, _ = _warm_vs_fresh(shapes_dir, tmp_path, 120, tiny_config())
    for key in ("loss/C", "loss/G_recon"):
        assert abs(logs["warm"][key] - last[key]) < abs(logs["fresh"][key] - last[key]), key
    assert logs["warm"]["psnr/recon"] > logs["fresh"]["psnr/recon"] + 1


@pytest.mark.slow  # trains a tiny model
def test_warm_start_keeps_the_released_weights_held_out_photos_out(shapes_dir, tmp_path, capsys):
    """Weights released from a run that held out a fraction of each class are measured on those photos: a warm
    start holds the same photos out by default and refuses another fraction (it would train on some of them)."""
    from cvaegan.hub import held_out_fraction

    data = load_images(shapes_dir, 32, progress=False)
    one = dict(steps=1, checkpoint_every=1, batch_size=8, sample_every=0, device="cpu")
    export = train(data, tmp_path / "src", TrainConfig(val_fraction=0.25, **one), tiny_config(), progress=False)
    assert held_out_fraction(export) == 0.0  # a bare export: nothing recorded, nothing inherited
    (export / "figures.json").write_text(json.dumps({"split": "held-out", "val_fraction": 0.25}))
    assert held_out_fraction(export) == 0.25
    train(data, tmp_path / "warm", TrainConfig(**one), None, progress=False, init_from=export)
    assert json.loads((tmp_path / "warm" / "train_config.json").read_text())["val_fraction"] == 0.25
    assert "holding out 0.25 of each class" in capsys.readouterr().out
    with pytest.raises(TrainError, match="--val-fraction 0.25"):
        train(data, tmp_path / "other", TrainConfig(val_fraction=0.5, **one), None, progress=False, init_from=export)
    assert not (tmp_path / "other" / "checkpoint.pt").exists()
    (export / "figures.json").write_text("{broken")
    assert held_out_fraction(export) == 0.0


def test_recipe_options_keep_what_shapes_a_step_and_fill_in_older_runs():
    """A weights folder's recipe record (figures.json "training"): the options that shape the losses and updates,
    none of the run's length, logging or start-only schedule; a train_config.json from before an option existed
    counts it at the value that run trained with."""
    from cvaegan.config import recipe_changes, recipe_options

    v3 = TrainConfig.from_preset("v3", steps=500, budget_minutes=60.0, warmup_steps=1000, seed=3)
    rec = recipe_options(v3.to_dict())
    assert rec["c_label_smoothing"] == 0.0 and rec["stratify"] == 8 and rec["betas"] == [0.5, 0.999]
    assert not {"steps", "budget_minutes", "warmup_steps", "seed", "preset", "exclude_classes"} & set(rec)
    assert json.loads(json.dumps(rec)) == rec  # stored as JSON and compared after the round trip
    old = {k: v for k, v in v3.to_dict().items() if k not in ("c_label_smoothing", "lecam_weight")}
    assert recipe_options(old) == rec
    smoothed = recipe_options(dataclasses.replace(v3, c_label_smoothing=0.1, steps=9).to_dict())
    assert recipe_changes(rec, smoothed) == ["c_label_smoothing 0.0 -> 0.1"]
    assert recipe_changes({**rec, "not_an_option_yet": 1}, rec) == [] and recipe_changes(rec, rec) == []


@pytest.mark.slow  # trains a tiny model
def test_warm_start_says_whether_it_keeps_the_weights_recipe(shapes_dir, tmp_path, capsys):
    """`train --init-from` says when its recipe differs from the one the weights record, naming the options:
    changing C's loss at a warm start costs most of a working stretch (README, the birds warm starts)."""
    from cvaegan.config import recipe_options

    data = load_images(shapes_dir, 32, progress=False)
    one = dict(steps=1, checkpoint_every=1, batch_size=8, sample_every=0, device="cpu")
    export = train(data, tmp_path / "src", TrainConfig(**one), tiny_config(), progress=False)
    capsys.readouterr()
    train(data, tmp_path / "blind", TrainConfig(**one), None, progress=False, init_from=export)
    assert "do not record the recipe" in capsys.readouterr().out
    (export / "figures.json").write_text(json.dumps({"training": recipe_options(TrainConfig(**one).to_dict())}))
    train(data, tmp_path / "same", TrainConfig(warmup_steps=5, **one), None, progress=False, init_from=export)
    assert "the same recipe as the weights' training" in capsys.readouterr().out
    changed = TrainConfig(c_label_smoothing=0.1, **one)
    train(data, tmp_path / "smoothed", changed, None, progress=False, init_from=export)
    said = capsys.readouterr().out
    assert "recipe differs" in said and "(c_label_smoothing 0.0 -> 0.1)" in said


@pytest.mark.slow  # trains a tiny model
def test_a_warm_start_release_counts_the_training_of_the_weights_it_started_from(shapes_dir, tmp_path):
    """A model card states CPU-hours, steps and images seen: for a warm-started run, the source weights' training
    (figures.json) is added to the run's own, recorded in the run folder when the warm start begins, and chained
    over a second warm start."""
    from cvaegan.card import total_row
    from cvaegan.hub import training_so_far
    from cvaegan.release import ReleaseError, training_total

    data = load_images(shapes_dir, 32, progress=False)
    one = dict(steps=1, checkpoint_every=1, batch_size=8, sample_every=0, device="cpu")
    export = train(data, tmp_path / "src", TrainConfig(**one), tiny_config(), progress=False)
    assert training_so_far(export) is None  # a bare export records no training
    train(data, tmp_path / "blind", TrainConfig(**one), None, progress=False, init_from=export)
    unknown = training_total(tmp_path / "blind", 1, {"cpu_min": 1.0, "wall_min": 1.5, "images": 8})
    assert unknown["warm_start"] == {"init_from": "export", "trained_before": None}
    assert "training_total" not in unknown and "was not recorded" in total_row(unknown)

    clock = {"cpu_min": 60.0, "wall_min": 61.0, "images": 252224}
    (export / "figures.json").write_text(json.dumps({"steps": 7882, "clock": clock}))
    assert training_so_far(export) == {"steps": 7882, **clock}
    run = tmp_path / "warm"
    train(data, run, TrainConfig(**one), None, progress=False, init_from=export)
    recorded = json.loads((run / "warm_start.json").read_text())
    assert recorded["trained_before"] == {"steps": 7882, **clock}
    figures = training_total(run, 2600, {"cpu_min": 60.0, "wall_min": 64.0, "images": 83200})
    assert figures["training_total"] == {"steps": 10482, "cpu_min": 120.0, "wall_min": 125.0, "images": 335424}
    row = total_row(figures)
    assert "2.00 CPU-hours (120 CPU-minutes), 10,482 steps, 335,424 images seen" in row and "`export`" in row
    # a second warm start from those weights counts both stretches
    (export / "figures.json").write_text(json.dumps({"steps": 2600, "clock": clock, **figures}))
    assert training_so_far(export)["steps"] == 10482
    # a run that was not warm-started: the total is its own clock, and the card adds no row
    own = training_total(tmp_path / "src", 1, clock)
    assert own == {"training_total": {"steps": 1, **clock}} and total_row(own) == ""
    assert training_total(tmp_path / "src", 1, None) == {}
    for broken in ("{broken", "[]"):
        (run / "warm_start.json").write_text(broken)
        with pytest.raises(ReleaseError, match="warm_start.json"):
            training_total(run, 1, clock)


@pytest.mark.slow  # trains a tiny model
def test_warm_start_refuses_weights_without_discriminator(tiny_model, shapes_dir, tmp_path):
    from cvaegan.hub import WeightsError, save_pretrained

    save_pretrained(tiny_model, tmp_path / "weights")
    data = load_images(shapes_dir, 32, progress=False)
    with pytest.raises(WeightsError, match="discriminator"):
        train(
            data,
            tmp_path / "w",
            TrainConfig(steps=1, batch_size=8, device="cpu"),
            None,
            progress=False,
            init_from=tmp_path / "weights",
        )


@pytest.mark.slow  # trains a tiny model
def test_excluded_classes_are_never_trained_on_and_the_split_stays_put(shapes_dir, tmp_path, monkeypatch):
    from cvaegan.data import split_indices

    data = load_images(shapes_dir, 32, progress=False)
    excluded = data.class_folders[1]
    seen = []
    orig = Trainer.train_step
    monkeypatch.setattr(
        Trainer, "train_step", lambda self, x, c, gen, noise: seen.append(x.clone()) or orig(self, x, c, gen, noise)
    )
    tcfg = TrainConfig(
        steps=2,
        batch_size=8,
        val_fraction=0.25,
        exclude_classes=excluded,
        sample_every=0,
        checkpoint_every=2,
        device="cpu",
    )
    export = train(data, tmp_path / "run", tcfg, tiny_config(), progress=False)
    cfg = json.loads((export / "config.json").read_text())
    assert cfg["num_classes"] == 3 and excluded not in cfg["class_folders"]
    _, va = split_indices(data.labels, 0.25, seed=1234)
    full_val = {data.paths[i] for i in va.tolist() if data.class_folders[data.labels[i]] != excluded}
    assert set(json.loads((tmp_path / "run" / "split.json").read_text())["val"]) == full_val
    banned = data.images[data.labels == 1].float() / 127.5 - 1
    for x in seen:  # no training image (flipped or not) is a photo of the excluded class
        for img in x:
            assert not any(
                torch.allclose(img, b, atol=1e-2) or torch.allclose(img, b.flip(-1), atol=1e-2) for b in banned
            )
    with pytest.raises(Exception, match="unknown class folders"):
        train(
            data,
            tmp_path / "bad",
            TrainConfig(steps=1, batch_size=8, exclude_classes="nope", device="cpu"),
            tiny_config(),
            progress=False,
        )
    # a warm start from these weights on the full data says which classes to leave out, and works with them left out
    one = dict(steps=1, batch_size=8, val_fraction=0.25, sample_every=0, checkpoint_every=1, device="cpu")
    with pytest.raises(TrainError, match=f"add --exclude-classes {excluded}$"):
        train(data, tmp_path / "warm_all", TrainConfig(**one), None, progress=False, init_from=export)
    assert not (tmp_path / "warm_all" / "checkpoint.pt").exists()
    warm = train(
        data, tmp_path / "warm", TrainConfig(exclude_classes=excluded, **one), None, progress=False, init_from=export
    )
    assert json.loads((warm / "config.json").read_text())["class_folders"] == cfg["class_folders"]


@pytest.mark.slow  # trains a tiny model
def test_exported_checkpoint_carries_what_a_warm_start_needs(shapes_dir, tmp_path):
    from cvaegan.hub import load_training_state
    from cvaegan.train import export_checkpoint

    data = load_images(shapes_dir, 32, progress=False)
    train(
        data,
        tmp_path / "run",
        TrainConfig(steps=2, batch_size=8, checkpoint_every=2, sample_every=0, device="cpu"),
        tiny_config(),
        progress=False,
    )
    warm = load_training_state(export_checkpoint(tmp_path / "run", tmp_path / "w"))
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    for k, v in state["means"].items():
        assert torch.allclose(warm["means"][k].float(), v.float(), atol=1e-2), k
    assert set(warm["nets"]["D"]) == set(state["nets"]["D"])
    slim = export_checkpoint(tmp_path / "run", tmp_path / "slim", include_discriminator=False)
    assert not (slim / "discriminator.safetensors").exists() and not (slim / "running_means.safetensors").exists()


def test_stratification_adapts_to_data_with_few_classes():
    from cvaegan.train import effective_stratify

    assert effective_stratify(8, 32, 264) == 8 and effective_stratify(0, 32, 3) == 0
    assert effective_stratify(8, 8, 4) == 4 and effective_stratify(8, 12, 5) == 4 and effective_stratify(8, 32, 3) == 2
