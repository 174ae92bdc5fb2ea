"""``auto`` for a training run's fast paths: ``model.channels_last``, ``model.compile``, ``trainer.precision``.

:func:`resolve_fast_paths` runs in :func:`synthseg.train.train` after the model is built and before the
Trainer is: it offers the candidates the config allows (a switch set to ``auto`` tries both values, one set
to true/false or a precision keeps it; reduced precision only on CUDA and only with
``fastpath.reduced_precision: true``), lets :func:`synthseg.utils.autotune.choose` measure the model's own
training step on copies of its networks and optimizers (or take this machine's cached choice, or the one a
resumed checkpoint recorded), applies the choice to the model and the config, and says it in one line. The
run records it: the config in ``results.json`` and the module's hyperparameters hold the chosen values,
``results.json`` and every checkpoint a ``fastpath`` entry with the measurement.

Each LightningModule's step is described here by a probe (:func:`probe_for`, a :class:`FastPathProbe`): the
networks to copy, which of them may be compiled, fixed inputs, how to build its optimizers and one training
step as its ``training_step`` computes it; :func:`apply_fast_paths` switches a built module's layout and
compilation.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor, nn

from synthseg.checkpoint import network_init_args
from synthseg.data.labels import labels_to_net
from synthseg.losses.dice import weighted_dice_loss
from synthseg.models.common import set_hparams
from synthseg.models.pgan import PGAN
from synthseg.models.spade import SPADEModule
from synthseg.models.unet import UNetModule
from synthseg.progressive import DEFAULT_BATCH_SIZE
from synthseg.utils.autotune import Candidate, Choice, Step, choose
from synthseg.utils.fastpath import bf16_native, compile_works, wants_cuda

log = logging.getLogger(__name__)

AUTO = "auto"
SWITCHES = {
    "channels_last": "model.channels_last",
    "compile": "model.compile",
    "precision": "trainer.precision",
}
FAITHFUL = {"channels_last": False, "compile": False, "precision": "32-true"}
AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


class Update:
    """``update(loss, optimizer)``: zero the gradients, backward, optimizer step, with the fp16 gradient scaler
    where the candidate has one; ``scale()`` is the scaler's current loss scale (1 without)."""

    def __init__(self, scaler: torch.amp.GradScaler | None) -> None:
        self.scaler = scaler

    def scale(self) -> float:
        return float(self.scaler.get_scale()) if self.scaler is not None else 1.0

    def __call__(self, loss: Tensor, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()


@dataclass
class FastPathProbe:
    """What a model measures its fast paths on.

    Attributes:
        networks: the networks to copy (by name); ``step`` gets the copies, compiled where asked.
        compiled: names of the networks ``model.compile`` compiles.
        inputs: fixed inputs of one step (4-D ones follow the candidate's memory layout).
        optimizers: builds the optimizers on the copied networks (the module's own optimizer factories).
        step: one training step ``step(networks, optimizers, inputs, update) -> tensors to compare``.
        shape: the input shape that goes into the cache key (batch, channels, height, width).
    """

    networks: dict[str, nn.Module]
    compiled: tuple[str, ...]
    inputs: dict[str, Tensor]
    optimizers: Callable[[dict[str, nn.Module]], list[torch.optim.Optimizer]]
    step: Callable[[dict[str, Any], list[torch.optim.Optimizer], dict[str, Tensor], Update], Sequence[Tensor]]
    shape: tuple[int, ...]


def _value(cfg: DictConfig, switch: str) -> Any:
    return OmegaConf.select(cfg, SWITCHES[switch], default=None)


def take_auto(cfg: DictConfig) -> set[str]:
    """The switches set to ``auto``, replaced by their faithful values so the model is built on those."""
    auto = {name for name in SWITCHES if _value(cfg, name) == AUTO}
    with open_dict(cfg):
        for name in auto:
            OmegaConf.update(cfg, SWITCHES[name], FAITHFUL[name])
    return auto


def _device(cfg: DictConfig) -> torch.device:
    return (
        torch.device("cuda")
        if wants_cuda(str(cfg.trainer.get("accelerator", "cpu")))
        else torch.device("cpu")
    )


def candidates(
    cfg: DictConfig, auto: set[str], model: pl.LightningModule, device: torch.device
) -> list[Candidate]:
    """Every combination the config allows, the faithful one (or the config's fixed values) first."""
    options: dict[str, list[Any]] = {name: [_value(cfg, name)] for name in SWITCHES}
    options["precision"] = [str(options["precision"][0])]
    if "channels_last" in auto:
        options["channels_last"] = [False, True]
    if "compile" in auto:
        # PGAN has no compile switch: its resolution and alpha change during training, each change recompiling
        can = isinstance(model, UNetModule | SPADEModule) and compile_works(device.type == "cuda")
        options["compile"] = [False, True] if can else [False]
    if "precision" in auto:
        options["precision"] = ["32-true"]
        if device.type == "cuda" and bool(OmegaConf.select(cfg, "fastpath.reduced_precision", default=False)):
            options["precision"] += (["bf16-mixed"] if bf16_native(True) else []) + ["16-mixed"]
    return [
        Candidate(bool(cl), bool(comp), str(prec))
        for cl, comp, prec in product(options["channels_last"], options["compile"], options["precision"])
    ]


def build_step(probe: FastPathProbe, candidate: Candidate, device: torch.device) -> Step:
    """One candidate's training step on fresh copies of the probe's networks and optimizers."""
    fmt = torch.channels_last if candidate.channels_last else torch.contiguous_format
    networks = {
        name: copy.deepcopy(net).to(device, memory_format=fmt) for name, net in probe.networks.items()
    }
    runners = {
        name: torch.compile(net) if candidate.compile and name in probe.compiled else net
        for name, net in networks.items()
    }
    optimizers = probe.optimizers(networks)
    inputs = {
        name: t.to(device).contiguous(memory_format=fmt) if t.dim() == 4 else t.to(device)
        for name, t in probe.inputs.items()
    }
    dtype = AUTOCAST.get(candidate.precision)
    update = Update(torch.amp.GradScaler(device.type) if candidate.precision == "16-mixed" else None)

    def step() -> Sequence[Tensor]:
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            return probe.step(runners, optimizers, inputs, update)

    return step


def model_key(model: pl.LightningModule, probe: FastPathProbe) -> dict[str, Any]:
    """The model's part of the cache key: class, architecture (the networks' constructor arguments), input."""
    architecture = {
        name: network_init_args(net) if hasattr(net, "init_args") else repr(net)
        for name, net in probe.networks.items()
    }
    return {
        "model": type(model).__name__,
        "architecture": architecture,
        "shape": list(probe.shape),
        "dtype": "float32",
    }


def resolve_fast_paths(
    cfg: DictConfig,
    auto: set[str],
    model: pl.LightningModule,
    batch_size: int,
    size: int,
    recorded: dict[str, Any] | None = None,
) -> Choice | None:
    """Choose the fast paths the config leaves to ``auto``, apply them to ``model`` and ``cfg``; None when
    nothing is ``auto``.

    Args:
        cfg: the composed train config (its ``auto`` switches already replaced, see :func:`take_auto`).
        auto: the switches that were ``auto``.
        model: the built LightningModule (untouched but for the chosen layout and compile wrappers).
        batch_size, size: the training batch and slice side to measure at (the model may know better, e.g.
            PGAN's minibatch at its final resolution).
        recorded: the ``fastpath`` entry of a checkpoint being resumed: taken as it is.
    """
    if not auto:
        return None
    device = _device(cfg)
    what = type(model).__name__
    if recorded is not None:
        choice = Choice.from_json(recorded, source="recorded")
    else:
        options = candidates(cfg, auto, model, device)
        probe = probe_for(model, batch_size, size) if len(options) > 1 else None
        if probe is None:
            choice = Choice(options[0], "only")
        else:
            what = f"{what} {tuple(probe.shape)}"
            steps = int(OmegaConf.select(cfg, "fastpath.steps", default=3))
            use_cache = bool(OmegaConf.select(cfg, "fastpath.cache", default=True))
            choice = choose(
                lambda c: build_step(probe, c, device),
                options,
                model_key(model, probe),
                device,
                steps,
                use_cache,
            )
    apply_choice(cfg, model, choice.candidate)
    print(choice.line(what), flush=True)
    return choice


def apply_choice(cfg: DictConfig, model: pl.LightningModule, candidate: Candidate) -> None:
    """The chosen values into the config (so ``results.json`` records them) and the model."""
    with open_dict(cfg):
        if OmegaConf.select(cfg, SWITCHES["channels_last"], default=None) is not None:
            OmegaConf.update(cfg, SWITCHES["channels_last"], candidate.channels_last)
        if OmegaConf.select(cfg, SWITCHES["compile"], default=None) is not None:
            OmegaConf.update(cfg, SWITCHES["compile"], candidate.compile)
        OmegaConf.update(cfg, SWITCHES["precision"], candidate.precision)
    apply_fast_paths(model, candidate.channels_last, candidate.compile)


def apply_fast_paths(model: pl.LightningModule, channels_last: bool, compile: bool) -> None:
    """Switch a built module's layout and compilation (what ``auto`` chose); weights unchanged. The module's
    hyperparameters record the values, so its checkpoints say which ran."""
    fmt = torch.channels_last
    if isinstance(model, UNetModule):
        if channels_last:
            model.net.to(memory_format=fmt)
        object.__setattr__(model, "run_net", torch.compile(model.net) if compile else model.net)
    elif isinstance(model, SPADEModule):
        if channels_last:
            model.generator.to(memory_format=fmt)
            model.discriminator.to(memory_format=fmt)
        object.__setattr__(
            model, "run_generator", torch.compile(model.generator) if compile else model.generator
        )
        run_d = torch.compile(model.discriminator) if compile else model.discriminator
        object.__setattr__(model, "run_discriminator", run_d)
    elif isinstance(model, PGAN):
        if channels_last:
            for net in (model.generator, model.discriminator, model.generator_ema):
                net.to(memory_format=fmt)
        model.channels_last = bool(channels_last)
        set_hparams(model, channels_last=bool(channels_last))
        return
    else:
        return
    set_hparams(model, channels_last=bool(channels_last), compile=bool(compile))


def probe_for(model: pl.LightningModule, batch_size: int, size: int) -> FastPathProbe | None:
    """The module's training step on fixed random inputs (None: a module without one, or SPADE with its VAE
    encoder, whose latents are random in every step)."""
    if isinstance(model, UNetModule):
        return _unet_probe(model, batch_size, size)
    if isinstance(model, SPADEModule) and model.encoder is None:
        return _spade_probe(model, batch_size)
    if isinstance(model, PGAN):
        return _pgan_probe(model)
    return None


def _unet_probe(model: UNetModule, batch_size: int, size: int) -> FastPathProbe:
    """:meth:`UNetModule.training_step`'s loss (weighted Dice [+ class-weighted CE]) and Adam step."""
    gen = torch.Generator().manual_seed(0)
    in_channels = int(model.net.init_args.get("in_channels", 1))
    image = torch.randn(batch_size, in_channels, size, size, generator=gen)
    label = torch.randint(0, model.num_classes, (batch_size, size, size), generator=gen)
    weights, ce_weight, classes = (
        model.class_weights.clone(),
        float(model.hparams.ce_weight),
        model.num_classes,
    )

    def step(nets: dict, optimizers: list, inputs: dict, update: Update) -> list[Tensor]:
        logits = nets["net"](inputs["image"]).float()
        probs = torch.softmax(logits, dim=1)
        target = F.one_hot(inputs["label"], classes).permute(0, 3, 1, 2).to(probs.dtype)
        loss = weighted_dice_loss(probs, target, weights.to(probs.device))
        if ce_weight:
            loss = loss + ce_weight * F.cross_entropy(
                logits, inputs["label"], weight=weights.to(logits.device)
            )
        update(loss, optimizers[0])
        return [loss.detach(), logits.detach()]

    return FastPathProbe(
        networks={"net": model.net},
        compiled=("net",),
        inputs={"image": image, "label": label},
        optimizers=lambda nets: [model.optimizer_factory(params=nets["net"].parameters())],
        step=step,
        shape=tuple(image.shape),
    )


def _spade_probe(model: SPADEModule, batch_size: int) -> FastPathProbe:
    """:meth:`SPADEModule.training_step`: generator step, then discriminator step on a fresh fake; real and
    fake through the discriminator in one batch."""
    gen, size, label_nc = torch.Generator().manual_seed(0), model.image_size, model.label_nc
    classes = torch.randint(0, label_nc, (batch_size, size, size), generator=gen)
    label = F.one_hot(classes, label_nc).permute(0, 3, 1, 2).float()
    real = torch.rand(batch_size, model.generator.output_nc, size, size, generator=gen) * 2 - 1
    objective = model.objective

    def discriminate(d: Any, label: Tensor, fake: Tensor, real: Tensor) -> tuple[list, list]:
        outputs = d(torch.cat([torch.cat([label, fake], dim=1), torch.cat([label, real], dim=1)], dim=0))
        half = fake.shape[0]
        return [[f[:half] for f in o] for o in outputs], [[f[half:] for f in o] for o in outputs]

    def step(nets: dict, optimizers: list, inputs: dict, update: Update) -> list[Tensor]:
        g, d, label, real = nets["generator"], nets["discriminator"], inputs["label"], inputs["real"]
        d.requires_grad_(False)
        fake = g(label)
        terms = objective.generator_terms(*discriminate(d, label, fake, real), fake=fake, real=real)
        loss_g = objective.total(terms)
        update(loss_g, optimizers[0])
        d.requires_grad_(True)
        with torch.no_grad():
            fake_d = g(label)
        loss_d = objective.total(objective.discriminator_terms(*discriminate(d, label, fake_d, real)))
        update(loss_d, optimizers[1])
        return [loss_g.detach(), loss_d.detach(), fake.detach()]

    return FastPathProbe(
        networks={"generator": model.generator, "discriminator": model.discriminator},
        compiled=("generator", "discriminator"),
        inputs={"label": label, "real": real},
        optimizers=lambda nets: [
            model.optimizer_g_factory(params=nets["generator"].parameters()),
            model.optimizer_d_factory(params=nets["discriminator"].parameters()),
        ],
        step=step,
        shape=tuple(label.shape),
    )


def _pgan_probe(model: PGAN) -> FastPathProbe:
    """:meth:`PGAN.training_step` at the final resolution and its minibatch: critic step with the gradient
    penalty, generator step on other latents."""
    res = model.generator.resolution
    count = model.schedule.batch_sizes.get(res, DEFAULT_BATCH_SIZE)
    gen, latent = torch.Generator().manual_seed(0), model.generator.latent_dim
    labels = torch.randint(0, model.classes, (count, res, res), generator=gen)
    # as the critic sees reals: one channel of class indices, or one per class (label_encoding=onehot)
    onehot = model.label_encoding == "onehot"
    reals = (
        F.one_hot(labels, model.classes).permute(0, 3, 1, 2).float()
        if onehot
        else labels_to_net(labels, model.classes, model.generator.index_order)
    )
    inputs = {
        "reals": reals,
        "z_d": torch.randn(count, latent, generator=gen),
        "z_g": torch.randn(count, latent, generator=gen),
        "mixing": torch.rand(count, 1, 1, 1, generator=gen),
    }
    if model.condition != "none":  # the slice's axial position, fed to both networks
        inputs["position"] = torch.rand(count, generator=gen)
    loss = model.loss

    def step(nets: dict, optimizers: list, inputs: dict, update: Update) -> list[Tensor]:
        g, d = nets["generator"], nets["discriminator"]
        position = inputs.get("position")

        def critic(x: Tensor) -> Tensor:
            return d(x) if position is None else d(x, 1.0, position)

        def generate(z: Tensor) -> Tensor:
            return g(z) if position is None else g(z, None, 1.0, position)

        with torch.no_grad():
            fakes = generate(inputs["z_d"])
        terms = loss.discriminator(
            critic, inputs["reals"], fakes, inputs["mixing"], grad_scale=update.scale()
        )
        update(terms["loss"], optimizers[1])
        d.requires_grad_(False)
        g_loss = loss.generator(critic, generate(inputs["z_g"]))["loss"]
        update(g_loss, optimizers[0])
        d.requires_grad_(True)
        return [terms["loss"].detach(), g_loss.detach(), fakes]

    return FastPathProbe(
        networks={"generator": model.generator, "discriminator": model.discriminator},
        compiled=(),
        inputs=inputs,
        optimizers=lambda nets: [
            model.optimizer_g_factory(params=nets["generator"].parameters()),
            model.optimizer_d_factory(params=nets["discriminator"].parameters()),
        ],
        step=step,
        shape=tuple(reals.shape),
    )


class RecordFastPaths(pl.Callback):
    """Writes the choice into every checkpoint (``fastpath``), so a resumed run takes it again."""

    def __init__(self, choice: Choice) -> None:
        self.choice = choice

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["fastpath"] = self.choice.to_json()
