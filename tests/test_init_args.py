"""records_init_args: networks record every constructor argument, and snapshots rebuild them from it."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from synthseg.utils.init_args import records_init_args


class _Net(nn.Module):
    @records_init_args
    def __init__(self, channels: int, width: int = 4, *, norm: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, width, 3)


class _Wider(_Net):
    @records_init_args
    def __init__(self, channels: int, extra: int = 2) -> None:
        super().__init__(channels, width=4 + extra)


def test_every_argument_is_recorded_with_its_default():
    assert _Net(1).init_args == {"channels": 1, "width": 4, "norm": False}
    assert _Net(2, 8, norm=True).init_args == {"channels": 2, "width": 8, "norm": True}
    assert _Wider(3).init_args == {"channels": 3, "extra": 2}  # the subclass's own arguments


def test_a_recorded_network_round_trips_through_a_snapshot(tmp_path: Path, monkeypatch):
    import sys
    import types

    from synthseg.checkpoint import load_network, save_network

    # Snapshots only rebuild classes under synthseg.networks: register the test class there.
    module = types.ModuleType("synthseg.networks._recorded_test")
    module._Net = _Net
    monkeypatch.setattr(_Net, "__module__", module.__name__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    net = _Net(2, 6, norm=True)
    save_network(net, tmp_path / "net.pt")
    loaded, _ = load_network(tmp_path / "net.pt")
    assert loaded.init_args == net.init_args and torch.equal(loaded.conv.weight, net.conv.weight)
