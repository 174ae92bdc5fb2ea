"""SPADE objective: hinge, feature matching and KL terms against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from synthseg.losses.adversarial import SPADEObjective, kl_divergence


def t(*values: float, requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, requires_grad=requires_grad)


def outputs():
    """Two discriminators; D0 has two intermediate features, D1 one; the last entry is the prediction."""
    fake = [[t(1.0, 2.0), t(0.5), t(-2.0, 0.5)], [t(0.0, 0.0, 3.0), t(0.0)]]
    real = [[t(1.0, 4.0, requires_grad=True), t(0.0), t(0.5, 2.0)], [t(1.0, 1.0, 1.0), t(-1.0)]]
    return fake, real


def test_discriminator_hinge_by_hand():
    fake, real = outputs()
    terms = SPADEObjective().discriminator_terms(fake, real)
    # D_real: D0 mean(relu(1 - [0.5, 2])) = 0.25, D1 relu(1 + 1) = 2 -> (0.25 + 2) / 2
    # D_fake: D0 mean(relu(1 + [-2, 0.5])) = 0.75, D1 relu(1 + 0) = 1 -> (0.75 + 1) / 2
    assert set(terms) == {"D_real", "D_fake"}
    assert terms["D_real"].item() == pytest.approx(1.125)
    assert terms["D_fake"].item() == pytest.approx(0.875)


def test_generator_terms_by_hand():
    fake, real = outputs()
    terms = SPADEObjective(lambda_feat=10.0).generator_terms(fake, real)
    # GAN: D0 -mean([-2, 0.5]) = 0.75, D1 -0 = 0 -> 0.375
    assert terms["GAN"].item() == pytest.approx(0.375)
    # Feature matching, weight 10 / 2 per L1 term: D0 |[1,2]-[1,4]| -> 1 and |0.5-0| -> 0.5;
    # D1 |[0,0,3]-[1,1,1]| -> 4/3; the predictions are not matched.
    assert terms["GAN_Feat"].item() == pytest.approx(5 * (1 + 0.5 + 4 / 3))
    assert "KLD" not in terms
    assert SPADEObjective.total(terms).item() == pytest.approx(0.375 + 5 * (1 + 0.5 + 4 / 3))


def test_feature_matching_does_not_train_through_real_features():
    fake, real = outputs()
    fake[0][0].requires_grad_(True)
    SPADEObjective().feature_matching(fake, real).backward()
    assert real[0][0].grad is None
    # d/dfake of 5 * mean(|fake - real|) over 2 elements: 5 * sign / 2, sign(0) = 0
    torch.testing.assert_close(fake[0][0].grad, t(0.0, -2.5))


def test_feature_matching_off():
    fake, real = outputs()
    assert "GAN_Feat" not in SPADEObjective(lambda_feat=0.0).generator_terms(fake, real)


def test_kl_divergence_by_hand():
    mu, logvar = t(1.0, 0.0), t(0.0, math.log(2.0))
    # -0.5 * [(1 + 0 - 1 - 1) + (1 + ln2 - 0 - 2)] = 1 - ln2 / 2
    assert kl_divergence(mu, logvar).item() == pytest.approx(1 - math.log(2.0) / 2)
    fake, real = outputs()
    terms = SPADEObjective(lambda_kld=0.05).generator_terms(fake, real, mu=mu, logvar=logvar)
    assert terms["KLD"].item() == pytest.approx(0.05 * (1 - math.log(2.0) / 2))


def test_pixel_l1_by_hand():
    fake, real = outputs()
    image = torch.tensor([[[[0.0, 1.0], [-1.0, 0.5]]]], requires_grad=True)
    target = torch.tensor([[[[0.5, 1.0], [1.0, 0.5]]]])
    terms = SPADEObjective(lambda_l1=4.0).generator_terms(fake, real, fake=image, real=target)
    # mean |[-0.5, 0, -2, 0]| = 0.625, times 4
    assert terms["L1"].item() == pytest.approx(2.5)
    assert "L1" not in SPADEObjective().generator_terms(fake, real, fake=image, real=target)
    terms["L1"].backward()
    torch.testing.assert_close(image.grad, torch.tensor([[[[-1.0, 0.0], [-1.0, 0.0]]]]))
    with pytest.raises(ValueError, match="generated and the real images"):
        SPADEObjective(lambda_l1=1.0).generator_terms(fake, real)


def test_class_mean_term_by_hand():
    fake, real = outputs()
    image = torch.tensor([[[[0.0, 1.0], [-1.0, 0.5]]]], requires_grad=True)
    target = torch.tensor([[[[0.5, 1.0], [1.0, 0.5]]]])
    # classes [[0, 1], [1, 2]] of 4 (class 3 absent): means fake 0 / 0 / 0.5, real 0.5 / 1 / 0.5
    label = torch.nn.functional.one_hot(torch.tensor([[[0, 1], [1, 2]]]), 4).permute(0, 3, 1, 2).float()
    terms = SPADEObjective(lambda_class=2.0).generator_terms(fake, real, fake=image, real=target, label=label)
    # mean over the 3 present classes of |0 - 0.5|, |0 - 1|, 0 = 0.5, times 2
    assert terms["Class"].item() == pytest.approx(1.0)
    assert "Class" not in SPADEObjective().generator_terms(fake, real, fake=image, real=target, label=label)
    terms["Class"].backward()
    # each pixel gets sign(gap) / (its class's pixel count) * 2 / 3
    torch.testing.assert_close(image.grad, torch.tensor([[[[-2 / 3, -1 / 3], [-1 / 3, 0.0]]]]))
    with pytest.raises(ValueError, match="and the label map"):
        SPADEObjective(lambda_class=1.0).generator_terms(fake, real, fake=image, real=target)


def test_class_mean_term_ignores_where_inside_a_class_the_values_are():
    # unlike the pixel L1, the same values moved around within a class cost nothing
    fake, real = outputs()
    target = torch.tensor([[[[0.2, 0.8], [0.8, 0.2]], [[1.0, 0.0], [0.0, 1.0]]]])  # (1, 2 sequences, 2, 2)
    swapped = target.flip(-1)
    label = torch.nn.functional.one_hot(torch.tensor([[[0, 0], [1, 1]]]), 2).permute(0, 3, 1, 2).float()
    objective = SPADEObjective(lambda_l1=1.0, lambda_class=1.0)
    terms = objective.generator_terms(fake, real, fake=swapped, real=target, label=label)
    assert terms["Class"].item() == 0.0 and terms["L1"].item() > 0
    shifted = objective.generator_terms(fake, real, fake=target + 0.25, real=target, label=label)
    assert shifted["Class"].item() == pytest.approx(0.25)


def test_adversarial_weight_scales_only_the_generator_hinge():
    fake, real = outputs()
    image, target = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
    paper = SPADEObjective(lambda_l1=2.0).generator_terms(fake, real, fake=image, real=target)
    weak = SPADEObjective(lambda_l1=2.0, lambda_gan=0.25).generator_terms(fake, real, fake=image, real=target)
    assert paper["GAN"].item() != 0.0
    assert weak["GAN"].item() == pytest.approx(0.25 * paper["GAN"].item())
    for name in ("GAN_Feat", "L1"):  # the reconstruction terms keep their weights
        assert weak[name].item() == pytest.approx(paper[name].item())
    # the discriminator's loss is the paper's at any weight
    d_paper = SPADEObjective().discriminator_terms(fake, real)
    d_weak = SPADEObjective(lambda_gan=0.0).discriminator_terms(fake, real)
    assert {k: v.item() for k, v in d_weak.items()} == {k: v.item() for k, v in d_paper.items()}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lambda_feat": -1.0},
        {"lambda_kld": -0.1},
        {"lambda_l1": -1.0},
        {"lambda_l1": float("nan")},
        {"lambda_gan": -0.5},
        {"lambda_class": -1.0},
        {"lambda_class": float("nan")},
    ],
)
def test_negative_weights_raise(kwargs):
    with pytest.raises(ValueError):
        SPADEObjective(**kwargs)


def test_mismatched_discriminator_lists_raise():
    fake, real = outputs()
    with pytest.raises(ValueError, match="same discriminators"):
        SPADEObjective().discriminator_terms(fake, real[:1])
