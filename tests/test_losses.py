"""Each loss term against hand-computed values, the reduction convention, and the running means."""

import math

import torch

from cvaegan import losses as L


def test_kl_matches_hand_computation():
    mu = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])
    # sample 1: 1/2 [(1 + 1 - 0 - 1) + (0 + 2 - ln2 - 1)] = 1/2 (2 - ln2); sample 2: 1/2 (0 + 4) = 2
    expected = ((2 - math.log(2)) / 2 + 2.0) / 2
    assert torch.isclose(L.kl_loss(mu, logvar), torch.tensor(expected))
    assert L.kl_loss(torch.zeros(3, 5), torch.zeros(3, 5)) == 0


def test_reconstruction_loss_sums_per_sample_and_averages_batch():
    x_r = torch.zeros(2, 3, 2, 2)
    x_f = torch.ones(2, 3, 2, 2)  # 12 squared errors of 1 per sample
    fd_r, fd_f = torch.zeros(2, 4), torch.full((2, 4), 2.0)  # 4 * 4 = 16 per sample
    fc_r, fc_f = torch.zeros(2, 3), torch.tensor([[1.0, 0, 0], [0, 0, 3.0]])  # 1 and 9
    got = L.reconstruction_loss(x_r, x_f, fd_r, fd_f, fc_r, fc_f)
    expected = 0.5 * ((12 + 16 + 1) + (12 + 16 + 9)) / 2
    assert torch.isclose(got, torch.tensor(expected))


def test_reduction_convention_sum_over_pixels_mean_over_batch():
    """Doubling the pixels doubles L_G (sum); doubling the batch with the same errors does not (mean)."""
    small = L.reconstruction_loss(torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4), *[torch.zeros(2, 1)] * 4)
    big = L.reconstruction_loss(torch.zeros(2, 3, 8, 4), torch.ones(2, 3, 8, 4), *[torch.zeros(2, 1)] * 4)
    batch = L.reconstruction_loss(torch.zeros(4, 3, 4, 4), torch.ones(4, 3, 4, 4), *[torch.zeros(4, 1)] * 4)
    assert torch.isclose(big, 2 * small)
    assert torch.isclose(batch, small)
    assert torch.isclose(small, torch.tensor(0.5 * 48))


def test_mean_feature_matching():
    assert torch.isclose(L.mean_feature_matching(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])), torch.tensor(2.5))


def test_class_mean_feature_matching_counts_only_present_classes():
    real = torch.tensor([[1.0, 1.0], [0.0, 0.0], [5.0, 5.0]])
    fake = torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.0, 0.0]])
    present = torch.tensor([True, True, False])
    assert torch.isclose(L.class_mean_feature_matching(real, fake, present), torch.tensor(0.5 * (1 + 4)))


def test_class_means():
    f = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    means, counts = L.class_means(f, torch.tensor([0, 0, 2]), 3)
    assert torch.equal(counts, torch.tensor([2.0, 0.0, 1.0]))
    assert torch.allclose(means, torch.tensor([[2.0, 1.0], [0.0, 0.0], [5.0, 5.0]]))


def test_discriminator_loss_uses_real_and_both_fakes():
    zero = torch.zeros(4)
    assert torch.isclose(L.discriminator_loss(zero, zero, zero), torch.tensor(3 * math.log(2)))
    big = torch.full((4,), 30.0)
    assert L.discriminator_loss(big, -big, -big) < 1e-6
    # a mistake on either kind of fake costs the same
    assert torch.isclose(L.discriminator_loss(big, big, -big), L.discriminator_loss(big, -big, big))
    assert L.discriminator_loss(big, big, -big) > 10


def test_classifier_loss_is_cross_entropy():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    expected = (-torch.log_softmax(logits, 1)[0, 0] - torch.log_softmax(logits, 1)[1, 1]) / 2
    assert torch.isclose(L.classifier_loss(logits, torch.tensor([0, 1])), expected)


def test_running_means_momentum_and_gradients():
    rm = L.RunningMeans(groups=2, dim=2, momentum=0.75)
    present = torch.tensor([True, False])
    batch = torch.tensor([[4.0, 8.0], [100.0, 100.0]], requires_grad=True)
    est = rm.estimate(batch, present)
    # never seen: the batch mean alone; absent group keeps its (zero) stored mean
    assert torch.equal(est.detach(), torch.tensor([[4.0, 8.0], [0.0, 0.0]]))
    rm.update(est, present)
    assert rm.seen.tolist() == [True, False]
    batch2 = torch.tensor([[0.0, 0.0], [2.0, 2.0]], requires_grad=True)
    est2 = rm.estimate(batch2, torch.tensor([True, True]))
    assert torch.allclose(est2.detach(), torch.tensor([[3.0, 6.0], [2.0, 2.0]]))  # 0.75 * old + 0.25 * batch
    est2.sum().backward()
    # gradient flows through the current batch only, scaled by (1 - momentum) for seen groups
    assert torch.allclose(batch2.grad, torch.tensor([[0.25, 0.25], [1.0, 1.0]]))
    assert not rm.mean.requires_grad


def test_running_means_momentum_zero_is_batch_mean():
    rm = L.RunningMeans(1, 3, momentum=0.0)
    one = torch.tensor([True])
    rm.update(rm.estimate(torch.ones(1, 3), one), one)
    assert torch.equal(rm.estimate(torch.full((1, 3), 7.0), one), torch.full((1, 3), 7.0))
