"""Fast paths chosen by measurement (``auto``): time the candidates on this machine, keep the fastest that
computes the same thing, remember the choice per machine.

A fast path measured elsewhere can be a slowdown here: channels_last made PGAN's and SPADE's 256x256 steps
1.6-1.7x slower on a 2-core AVX2 CPU and the demo's U-Net 12 % faster (issue 27). So where a config says
``auto``, :func:`choose` builds every candidate (a :class:`Candidate`: memory layout, ``torch.compile``,
autocast precision) on copies of the networks and optimizers, checks on the first step that each one computes
what the faithful candidate (fp32, NCHW, eager; always the first) computes, times a few steps of each in
turn and keeps the fastest. The caller's weights, optimizer state and random streams are not touched: the
copies are the caller's to make, and torch's (CPU and CUDA), numpy's and Python's random states are restored
afterwards.

Agreement: fp32 candidates (another layout, compiled) must match the faithful one within
:data:`FP32_TOLERANCE` (the same function, other rounding); reduced-precision candidates (bf16/fp16 autocast,
offered on CUDA only and only where the run allows them) within :data:`REDUCED_TOLERANCE`. A candidate that
disagrees, or fails to build or run, is refused and said.

The choice and its measurement are cached in ``fastpath.json`` in :func:`synthseg.paths.user_cache_dir`,
under a key of the model (class, architecture, input shape, dtype), the device and the machine (torch version,
CPU model, instruction sets and flags or GPU name, torch threads), so the next run on this machine with the
same model takes it without timing anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import platform
import random
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthseg.paths import user_cache_dir
from synthseg.utils.atomic import write_text_atomic

log = logging.getLogger(__name__)

CACHE_NAME = "fastpath.json"
FP32_TOLERANCE = (1e-3, 1e-5)  # (relative, absolute): another layout or a compiled graph, other rounding
REDUCED_TOLERANCE = (5e-2, 1e-2)  # bf16 / fp16 autocast: about 3 significant digits per operation
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")


@dataclass(frozen=True)
class Candidate:
    """One combination of fast paths."""

    channels_last: bool = False
    compile: bool = False
    precision: str = "32-true"

    @property
    def reduced(self) -> bool:
        return self.precision != "32-true"

    def label(self) -> str:
        parts = ["channels_last" if self.channels_last else "NCHW", "compiled" if self.compile else "eager"]
        return ", ".join([*parts, self.precision])


@dataclass
class Choice:
    """The candidate kept, where it came from (``measured``, ``cached``, ``recorded`` in a checkpoint, or
    ``only`` when there was nothing to choose from), and the measurement."""

    candidate: Candidate
    source: str
    seconds: dict[str, float] = field(default_factory=dict)  # median step time per candidate label
    refused: dict[str, str] = field(default_factory=dict)  # candidate label -> why
    key: dict[str, Any] = field(default_factory=dict)
    steps: int = 0

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types only: checkpoints carry it and load with ``weights_only=True``."""
        return json.loads(json.dumps({**asdict(self), "candidate": asdict(self.candidate)}, default=str))

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str | None = None) -> Choice:
        return cls(
            candidate=Candidate(**data["candidate"]),
            source=source or str(data.get("source", "cached")),
            seconds={str(k): float(v) for k, v in dict(data.get("seconds", {})).items()},
            refused={str(k): str(v) for k, v in dict(data.get("refused", {})).items()},
            key=dict(data.get("key", {})),
            steps=int(data.get("steps", 0)),
        )

    def line(self, what: str) -> str:
        """The one log line that says what was chosen, and why."""
        chosen = self.candidate.label()
        if self.source == "measured" and self.seconds:
            faithful = next(iter(self.seconds.values()))
            times = ", ".join(f"{label} {1000 * s:.0f} ms" for label, s in self.seconds.items())
            ratio = self.seconds[chosen] / faithful if faithful else 1.0
            refused = (
                f"; refused: {', '.join(f'{k} ({v})' for k, v in self.refused.items())}"
                if self.refused
                else ""
            )
            how = f"measured (median step of {self.steps}: {times}; {ratio:.2f}x the faithful path{refused})"
        else:
            how = {
                "cached": f"cached for this machine ({cache_file()})",
                "recorded": "recorded in the checkpoint",
            }
            how = how.get(self.source, "the only candidate")
        return f"fast paths (auto) for {what}: {chosen} - {how}"


# -------------------------------------------------------------------------------------------- the machine
def _cpu_description() -> dict[str, Any]:
    model, flags = platform.processor() or platform.machine(), ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = " ".join(sorted(line.split(":", 1)[1].split()))
    return {
        "cpu": model,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": hashlib.sha1(flags.encode()).hexdigest()[:12] if flags else "",
    }


def machine_key(device: torch.device) -> dict[str, Any]:
    """What makes a measurement this machine's: torch, the CPU (model, instruction sets, flags), the GPU,
    the torch threads a step runs with."""
    key: dict[str, Any] = {"torch": str(torch.__version__), "device": device.type, **_cpu_description()}
    key["threads"] = torch.get_num_threads()
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        key["gpu"] = str(torch.cuda.get_device_name(index))
        key["gpu_capability"] = list(torch.cuda.get_device_capability(index))
    return key


def key_id(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cache_file() -> Path:
    return user_cache_dir() / CACHE_NAME


def read_cache() -> dict[str, Any]:
    try:
        data = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(entry_id: str, choice: Choice) -> None:
    from filelock import FileLock

    path = cache_file()
    with FileLock(str(path) + ".lock"):  # two demo stages may measure at the same time
        data = read_cache()
        data[entry_id] = {**choice.to_json(), "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True))


# -------------------------------------------------------------------------------------- random streams
@contextlib.contextmanager
def preserved_random_state() -> Iterator[None]:
    """torch's (CPU and every CUDA device), numpy's global and Python's random states, restored on exit."""
    torch_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    numpy_state = np.random.get_state()  # noqa: NPY002 (the global state seed_everything sets)
    python_state = random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)
        np.random.set_state(numpy_state)  # noqa: NPY002
        random.setstate(python_state)


# ---------------------------------------------------------------------------------------------- measure
Step = Callable[[], Sequence[torch.Tensor]]


def agree(reference: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor], reduced: bool) -> str | None:
    """None when ``outputs`` match ``reference`` within the tolerance of the candidate's precision, else why."""
    rtol, atol = REDUCED_TOLERANCE if reduced else FP32_TOLERANCE
    if len(reference) != len(outputs):
        return f"{len(outputs)} outputs instead of {len(reference)}"
    for index, (ref, out) in enumerate(zip(reference, outputs, strict=True)):
        ref, out = ref.detach().float().cpu(), out.detach().float().cpu()
        if ref.shape != out.shape:
            return f"output {index} has shape {tuple(out.shape)} instead of {tuple(ref.shape)}"
        if not torch.isfinite(out).all():
            return f"output {index} is not finite"
        error = (out - ref).abs().max().item()
        if error > atol + rtol * ref.abs().max().item():
            return f"output {index} differs by {error:.3g} (tolerance {rtol:g} relative, {atol:g} absolute)"
    return None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    build: Callable[[Candidate], Step],
    candidates: Sequence[Candidate],
    device: torch.device,
    steps: int = 3,
) -> tuple[dict[str, float], dict[str, str]]:
    """Median seconds per step of each candidate that agrees with the first one, and the refused ones.

    Every candidate runs one untimed step first (compilation, allocator warm-up): its outputs are compared
    with the first candidate's. Then the agreeing candidates take ``steps`` timed steps in turn, one each per
    round, so that a change in the machine's load falls on all of them alike.
    """
    runs: dict[str, Step] = {}
    refused: dict[str, str] = {}
    reference: Sequence[torch.Tensor] | None = None
    for candidate in candidates:
        label = candidate.label()
        try:
            step = build(candidate)
            outputs = [t.detach().clone() for t in step()]
        except Exception as err:  # a backend that cannot build or run it: refused, not fatal
            if reference is None:
                raise
            refused[label] = f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"
            continue
        if reference is None:
            reference = outputs
        elif (why := agree(reference, outputs, candidate.reduced)) is not None:
            refused[label] = why
            continue
        runs[label] = step
    times: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(steps):
        for label, step in runs.items():
            _synchronize(device)
            start = time.perf_counter()
            step()
            _synchronize(device)
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(t) for label, t in times.items()}, refused


def choose(
    build: Callable[[Candidate], Step],
    candidates: Sequence[Candidate],
    key: dict[str, Any],
    device: torch.device,
    steps: int = 3,
    use_cache: bool = True,
) -> Choice:
    """The fastest agreeing candidate (the first one, the faithful path, on ties), from the cache when this
    machine has measured this key before.

    Args:
        build: makes a candidate's step on fresh copies of the networks and optimizers; each call of the step
            is one training step on fixed inputs and returns the tensors to compare (losses, outputs).
        candidates: the faithful candidate first.
        key: the model's part of the cache key (class, architecture, input shape, dtype); the device and the
            machine are added here.
        device: where the steps run.
        steps: timed steps per candidate.
        use_cache: read and write the per-machine cache.
    """
    if not candidates:
        raise ValueError("no candidates to choose from")
    full_key = {**key, **machine_key(device)}
    labels = [c.label() for c in candidates]
    entry_id = key_id({**full_key, "candidates": labels})
    if len(candidates) == 1:
        return Choice(candidates[0], "only", key=full_key)
    if use_cache:
        cached = read_cache().get(entry_id)
        if isinstance(cached, dict):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                return Choice.from_json(cached, source="cached")
    with preserved_random_state():
        seconds, refused = measure(build, candidates, device, steps)
    best = min(seconds, key=lambda label: (seconds[label], labels.index(label)))
    choice = Choice(candidates[labels.index(best)], "measured", seconds, refused, full_key, steps)
    if use_cache:
        try:
            _write_cache(entry_id, choice)
        except OSError as err:  # a read-only home: the run goes on, measured again next time
            log.warning("could not write the fast-path cache %s: %s", cache_file(), err)
    return choice
