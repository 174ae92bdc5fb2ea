"""Typed command settings: the one pattern every ``synthseg <command>`` entry point uses.

Each command declares a frozen dataclass of its settings (mirroring its ``conf/<command>.yaml``) and calls
``Settings.from_config(cfg)`` first thing in ``main()``: every key is type-checked and range-checked there, before
any work or write, and a bad value is one line naming the key. The YAML stays the one place holding the
command's defaults: ``from_config`` takes every value from the composed config (a key the YAML lacks is an
error), and the dataclass defaults only serve Python callers building settings by hand.

The configs themselves stay plain YAML, composable with Hydra's compose API. A value derived from another key
is an interpolation through a resolver registered when synthseg is imported (:func:`register_resolvers`), so
``instantiate(compose("train", overrides=["model=spade"]).model)`` works without ``train()``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import secrets
import types
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, Union

if TYPE_CHECKING:
    import torch

from synthseg.errors import InputError

S = TypeVar("S", bound="Settings")

_MISSING = "???"
MAX_SEED = 2**32 - 1  # what numpy, torch and Lightning all accept


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if hint is type(None):
        return "null"
    if hint is Any:
        return "anything"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if origin in (tuple, list):
        return f"a list of ({_describe(typing.get_args(hint)[0])})"
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return "a mapping"
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


class _Mismatch(Exception):
    pass


def _coerce(hint: Any, value: Any) -> Any:
    """``value`` as type ``hint`` (ints widen to float, lists become tuples), or raise _Mismatch."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if hint is type(None):
        if value is None:
            return None
        raise _Mismatch
    if origin in (Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(option, value)
            except _Mismatch:
                continue
        raise _Mismatch
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):  # Python callers pass paths
            return os.fspath(value)
        raise _Mismatch
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise _Mismatch
        item = typing.get_args(hint)[0]
        return tuple(_coerce(item, v) for v in value)
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        if isinstance(value, Mapping):
            return dict(value)
        raise _Mismatch
    raise TypeError(f"settings type {hint!r} is not supported")


def _plain(cfg: Any) -> dict[str, Any]:
    """A composed DictConfig (or any mapping) as a plain dict, interpolations resolved, ``???`` kept."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        values = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    else:
        values = dict(cfg)
    assert isinstance(values, dict)
    return values


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of every command's settings. Subclasses add fields and may override :meth:`check`.

    ``REQUIRED`` maps the fields that must be given to what they hold (``{"source": "DIR"}``): ``???``, null
    or an empty value is refused as ``source=DIR is required``.
    """

    REQUIRED: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):  # Python callers pass paths where the YAML holds strings
            value = getattr(self, item.name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, item.name, os.fspath(value))
            elif isinstance(value, list):  # lists become tuples, as from_config makes them
                object.__setattr__(
                    self, item.name, tuple(os.fspath(v) if isinstance(v, os.PathLike) else v for v in value)
                )
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, float) and not math.isfinite(value):
                # NaN compares false with every bound, so a range check alone would let it through.
                raise InputError(f"{item.name} must be a finite number, got {value}")
        seed = getattr(self, "seed", None)
        if isinstance(seed, int) and not 0 <= seed <= MAX_SEED:
            # numpy's generators refuse a negative seed, and only when the work has begun.
            raise InputError(f"seed must be between 0 and {MAX_SEED}, got {seed}")
        self.check()

    def check(self) -> None:
        """Range and consistency checks (raise InputError naming the key); types are checked by from_config.

        The values alone: no file is read here (Python callers build settings before their inputs exist).
        """

    def check_inputs(self) -> None:
        """Checks of the inputs on disk, together with the settings: folders and manifests readable, every file
        a manifest names present, inputs distinct, sizes and checkpoints that fit each other. ``run()`` calls it
        first, before any work or write (a mistake found after hours of work is a mistake found too late).
        """

    @classmethod
    def from_config(cls: type[S], cfg: Any, prefix: str = "", *, partial: bool = False) -> S:
        """Validate the composed config ``cfg`` once and build the settings.

        A command's ``main()`` passes its whole composed config: every key must be there (the YAML holds the
        defaults). ``partial=True`` is for Python callers passing a few keys: the others take the dataclass
        defaults.

        Raises:
            InputError: one line naming the first key that is unknown, missing, required, of the wrong type or
                out of range.
        """
        values = _plain(cfg)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise InputError(f"unknown setting(s): {', '.join(prefix + str(k) for k in unknown)}")
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for name in fields:
            key = prefix + name
            hint = hints[name]
            nested = isinstance(hint, type) and issubclass(hint, Settings)
            if name not in values:
                if not partial:
                    raise InputError(f"setting {key} is missing from the config")
                if nested:
                    kwargs[name] = hint.from_config({}, prefix=f"{key}.", partial=True)
                elif name in cls.REQUIRED:
                    raise InputError(f"{key}={cls.REQUIRED[name]} is required")
                continue
            value = values[name]
            if name in cls.REQUIRED and (value is None or value == _MISSING or value == ""):
                raise InputError(f"{key}={cls.REQUIRED[name]} is required")
            if value == _MISSING:
                raise InputError(f"{key} has no value (???): set {key}=...")
            if nested:
                if not isinstance(value, Mapping):
                    raise InputError(f"{key} must be a mapping, got {value!r}")
                kwargs[name] = hint.from_config(value, prefix=f"{key}.", partial=partial)
                continue
            try:
                kwargs[name] = _coerce(hint, value)
            except _Mismatch:
                raise InputError(f"{key} must be {_describe(hint)}, got {value!r}") from None
        try:
            return cls(**kwargs)
        except InputError as err:
            if prefix and not str(err).startswith(prefix):
                raise InputError(f"{prefix}{err}") from None
            raise


def check_choice(key: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Refuse ``value`` unless it is one of ``choices``, naming ``key``."""
    if value not in choices:
        raise InputError(f"{key} must be one of {', '.join(map(str, choices))}, got {value!r}")


def check_positive(key: str, value: float | None, *, allow_zero: bool = False) -> None:
    """Refuse a negative (or, without ``allow_zero``, zero) ``value``, naming ``key``; None passes."""
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise InputError(f"{key} must be {'non-negative' if allow_zero else 'positive'}, got {value}")


def check_device(key: str, name: str) -> None:
    """Refuse, before any work, a device name torch does not know or a device this machine lacks: ``auto``,
    ``cpu``, ``cuda``, ``cuda:N`` (N below the GPU count) or ``mps``, naming ``key``."""
    if name == "auto":
        return
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"{key}={name!r}: not a device name (auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise InputError(f"{key}={name}: no CUDA GPU on this machine (use {key}=cpu or {key}=auto)")
        if device.index is not None and device.index >= count:
            raise InputError(
                f"{key}={name}: this machine has {count} CUDA GPU(s) (cuda:0 to cuda:{count - 1})"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"{key}={name}: Apple's MPS is not available on this machine (use {key}=cpu)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"{key}={name!r}: synthseg runs on cpu, cuda or mps")


def resolve_device(name: str, key: str = "device") -> torch.device:
    """The ``torch.device`` that ``name`` names, refused as :func:`check_device` refuses; ``auto``: CUDA when
    available, else the CPU."""
    check_device(key, name)
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def count_items(value: Any) -> int:
    """``${len:${data.sequences}}``: how many items ``value`` holds; a bare string or null is one item (a single
    sequence; null is the default T1c)."""
    if value is None or isinstance(value, str):
        return 1
    return len(value)


_PROCESS_TOKEN = secrets.token_hex(3)


def process_token() -> str:
    """``${run_token:}``: six hex digits drawn once per process, so two training runs started in the same second
    get two run folders (``runs/<time>_<token>``; conf/hydra/default.yaml)."""
    return _PROCESS_TOKEN


# name -> function of the OmegaConf resolvers the configs under conf/ use
RESOLVERS = {"len": count_items, "run_token": process_token}


def register_resolvers() -> None:
    """Register :data:`RESOLVERS` with OmegaConf; idempotent (a name already registered is left as it is).

    Runs on ``import synthseg``; Hydra apps, tests composing configs and a second registration all find it.
    """
    from omegaconf import OmegaConf

    for name, function in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)
