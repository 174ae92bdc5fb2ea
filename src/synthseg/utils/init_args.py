"""Networks record their constructor arguments (``init_args``) so a snapshot rebuilds them without a config."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

Init = TypeVar("Init", bound=Callable[..., None])


def records_init_args(init: Init) -> Init:
    """Decorate a network's ``__init__`` so it sets ``self.init_args``: every argument, defaults included.

    The one way a network records what :func:`synthseg.checkpoint.load_network` rebuilds it from, instead of
    a hand-written dict per class that can forget an argument added later. Only the outermost decorated
    ``__init__`` of a subclass chain records (a subclass calling ``super().__init__`` keeps its own record).
    """
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        outermost = "init_args" not in self.__dict__
        if outermost:
            self.__dict__["init_args"] = None  # claimed: inner decorated __init__s leave it alone
        init(self, *args, **kwargs)
        if outermost:
            names = list(bound.arguments)[1:]  # without self
            self.__dict__["init_args"] = {name: bound.arguments[name] for name in names}

    return wrapper  # type: ignore[return-value]
