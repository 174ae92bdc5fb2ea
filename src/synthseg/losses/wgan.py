"""The WGAN-GP objective of progressive growing (Gulrajani et al. 2017, Karras et al. 2018), with named terms."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from synthseg.networks.conv_grad import no_weight_gradients

Critic = Callable[[Tensor], Tensor]


class WGANGPLoss:
    """WGAN-GP with the drift term, as the official progressive GAN trains with it.

    Per sample, the critic's loss is ``D(fake) - D(real) + gp_weight / gp_target**2 * (||grad D(mix)|| -
    gp_target)**2 + drift_weight * D(real)**2``, where ``mix = real + t * (fake - real)`` with one uniform
    ``t`` per sample; the generator's loss is ``-D(fake)``. Both are averaged over the minibatch.

    Args:
        gp_weight: weight of the gradient penalty (lambda, official 10).
        gp_target: target gradient norm (official 1).
        drift_weight: weight of the drift term that keeps D(real) near 0 (epsilon, official 0.001).
        penalty_subbatch: fast path, not official: take the penalty on the first ``K`` interpolates only (as
            some ports do; the penalty's double backward is the costliest part of the critic step). Its mean
            over those ``K`` replaces the batch mean; the critic sees a ``K``-sample batch there, so minibatch
            statistics differ. None (default): the whole batch, as the official code.
    """

    def __init__(
        self,
        gp_weight: float = 10.0,
        gp_target: float = 1.0,
        drift_weight: float = 0.001,
        penalty_subbatch: int | None = None,
    ) -> None:
        if gp_weight < 0 or drift_weight < 0:
            raise ValueError(f"loss weights must not be negative, got gp {gp_weight}, drift {drift_weight}")
        if gp_target <= 0:
            raise ValueError(f"gp_target must be positive, got {gp_target}")
        if penalty_subbatch is not None and (isinstance(penalty_subbatch, bool) or int(penalty_subbatch) < 1):
            raise ValueError(f"penalty_subbatch must be a positive int or None, got {penalty_subbatch!r}")
        self.gp_weight = float(gp_weight)
        self.gp_target = float(gp_target)
        self.drift_weight = float(drift_weight)
        self.penalty_subbatch = None if penalty_subbatch is None else int(penalty_subbatch)

    def gradient_penalty(
        self, critic: Critic, reals: Tensor, fakes: Tensor, mixing: Tensor, grad_scale: float = 1.0
    ) -> tuple[Tensor, Tensor]:
        """The weighted penalty and the gradient norm per interpolate, each of shape (K,).

        ``K`` is the batch, or ``penalty_subbatch`` when smaller. Differentiable with respect to the critic's
        weights (the input gradient is taken with create_graph). Arguments as :meth:`discriminator`.
        """
        if self.penalty_subbatch is not None and self.penalty_subbatch < reals.shape[0]:
            k = self.penalty_subbatch
            reals, fakes = reals[:k], fakes[:k]
            mixing = mixing[:k] if mixing.ndim and mixing.shape[0] > 1 else mixing
        mixed = (reals + (fakes - reals) * mixing).detach().requires_grad_(True)
        mixed_scores = critic(mixed).float()
        # create_graph: the penalty must itself be differentiated with respect to the critic's weights.
        # The scores' mean carries the scale, as the scaled loss (a batch mean) does: each sample's upstream
        # gradient is grad_scale / N, which the GradScaler has tuned not to overflow.
        count = mixed_scores.shape[0]
        # Only the input gradient: convolutions of synthseg.networks.conv_grad skip their weight gradients.
        with no_weight_gradients():
            (scaled_grads,) = torch.autograd.grad(mixed_scores.mean() * grad_scale, mixed, create_graph=True)
        grads = scaled_grads.float() * (count / grad_scale)
        grad_norm = grads.flatten(1).norm(dim=1)
        penalty = (grad_norm - self.gp_target).square() * (self.gp_weight / self.gp_target**2)
        return penalty, grad_norm

    def discriminator(
        self, critic: Critic, reals: Tensor, fakes: Tensor, mixing: Tensor, grad_scale: float = 1.0
    ) -> dict[str, Tensor]:
        """The critic's loss and its terms.

        Under mixed precision the scores and every term are taken in float32. With fp16 the input gradient
        of the penalty is taken from the scores' mean multiplied by ``grad_scale`` (the GradScaler's current
        scale) and scaled back in float32, as PyTorch's AMP recipe for gradient penalties: unscaled, fp16
        input gradients below 6e-8 would flush to zero. An overflow there makes the loss non-finite, and the
        GradScaler then skips the step and lowers its scale, as for any other overflow.

        Args:
            critic: maps images (N, C, H, W) to scores (N, 1).
            reals: real images (N, C, H, W).
            fakes: generated images (N, C, H, W), detached from the generator.
            mixing: interpolation factors in [0, 1], shape (N, 1, 1, 1) (or broadcastable).
            grad_scale: loss scale of the penalty's input gradient (1 without fp16 loss scaling).

        Returns:
            ``loss`` (scalar to minimise) and the batch means of ``D_real``, ``D_fake``, ``D_real_sign``
            (sign(D(real)), ADA's heuristic), ``wasserstein``
            (D(real) - D(fake), the critic's distance estimate), ``gradient_penalty`` (weighted),
            ``drift`` (weighted) and ``grad_norm``.
        """
        if reals.shape != fakes.shape:
            raise ValueError(f"reals {tuple(reals.shape)} and fakes {tuple(fakes.shape)} differ in shape")
        if not grad_scale > 0:
            raise ValueError(f"grad_scale must be positive, got {grad_scale}")
        real_scores = critic(reals).float()
        fake_scores = critic(fakes).float()
        penalty, grad_norm = self.gradient_penalty(critic, reals, fakes, mixing, grad_scale)
        drift = real_scores.flatten().square() * self.drift_weight
        if penalty.shape[0] == real_scores.shape[0]:
            per_sample = fake_scores.flatten() - real_scores.flatten() + penalty + drift
            total = per_sample.mean()
        else:  # penalty_subbatch: the penalty's mean over its own samples
            total = (fake_scores.flatten() - real_scores.flatten() + drift).mean() + penalty.mean()
        return {
            "loss": total,
            "D_real": real_scores.mean().detach(),
            "D_fake": fake_scores.mean().detach(),
            "D_real_sign": real_scores.sign().mean().detach(),  # ADA's overfitting heuristic r_t
            "wasserstein": (real_scores.mean() - fake_scores.mean()).detach(),
            "gradient_penalty": penalty.mean().detach(),
            "drift": drift.mean().detach(),
            "grad_norm": grad_norm.mean().detach(),
        }

    def generator(self, critic: Critic, fakes: Tensor) -> dict[str, Tensor]:
        """The generator's loss ``-mean D(fake)`` (``loss``) and ``D_fake``.

        Args:
            critic: maps images (N, C, H, W) to scores (N, 1).
            fakes: generated images (N, C, H, W), attached to the generator's graph.
        """
        fake_scores = critic(fakes).float()
        return {"loss": -fake_scores.mean(), "D_fake": fake_scores.mean().detach()}
