"""``auto`` for a training run's fast paths: ``model.channels_last``, ``model.compile``, ``trainer.precision``.

:func:`resolve_fast_paths` runs in :func:`synthseg.train.train` after the model is built and before the
Trainer is: it offers the candidates the config allows (a switch set to ``auto`` tries both values, one set
to true/false or a precision keeps it; reduced precision only on CUDA and only with
``fastpath.reduced_precision: true``), lets :func:`synthseg.utils.autotune.choose` measure the model's own
training step on copies of its networks and optimizers (or take this machine's cached choice, or the one a
resumed checkpoint recorded), applies the choice to the model and the config, and says it in one line. The
run records it: the config in ``results.json`` and the module's hyperparameters hold the chosen values,
``results.json`` and every checkpoint a ``fastpath`` entry with the measurement.

Each LightningModule describes its step for this with ``fast_path_probe(batch_size, size)`` (a
:class:`FastPathProbe`): the networks to copy, which of them may be compiled, fixed inputs, how to build its
optimizers and one training step.
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
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor, nn

from synthseg.checkpoint import network_init_args
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
        can = bool(getattr(model, "compilable", False)) and compile_works(device.type == "cuda")
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
        probe_fn = getattr(model, "fast_path_probe", None)
        probe = probe_fn(batch_size, size) if callable(probe_fn) and len(options) > 1 else None
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
    apply = getattr(model, "apply_fast_paths", None)
    if callable(apply):
        apply(channels_last=candidate.channels_last, compile=candidate.compile)


class RecordFastPaths(pl.Callback):
    """Writes the choice into every checkpoint (``fastpath``), so a resumed run takes it again."""

    def __init__(self, choice: Choice) -> None:
        self.choice = choice

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["fastpath"] = self.choice.to_json()
