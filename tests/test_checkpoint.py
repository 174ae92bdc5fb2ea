"""Safe checkpoint loading: no arbitrary unpickling, clear errors for foreign or mismatching checkpoints."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from synthseg.checkpoint import CheckpointError, load_network, safe_load, save_network
from synthseg.networks.unet import UNet


class _Payload:
    """Unpickling this runs os.system: a checkpoint must never be able to do that."""

    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED_MARKER",))


def test_malicious_checkpoint_is_refused_and_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": _Payload()}, path)  # the format a crafted checkpoint would use
    with pytest.raises(
        CheckpointError, match=f"{path}: refused to load.*os.system|{path}: refused to load.*posix"
    ):
        safe_load(path)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_network(path)
    raw = tmp_path / "evil.pkl"  # a bare pickle is refused as unreadable
    with open(raw, "wb") as handle:
        pickle.dump({"state_dict": _Payload()}, handle)
    with pytest.raises(CheckpointError):
        safe_load(raw)
    assert not (tmp_path / "PWNED_MARKER").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "not a readable PyTorch checkpoint"), (b"not a checkpoint at all", "not a readable")],
)
def test_unreadable_checkpoints(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        safe_load(path)


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        safe_load(tmp_path / "nope.ckpt")


def test_snapshot_round_trip(tmp_path: Path) -> None:
    net = UNet(num_classes=4, base_width=2)
    save_network(net, tmp_path / "unet.pt", meta={"tick": 3})
    loaded, meta = load_network(tmp_path / "unet.pt")
    assert meta == {"tick": 3} and loaded.init_args == net.init_args
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_config_mismatch_is_one_clear_line(tmp_path: Path) -> None:
    save_network(UNet(num_classes=7, base_width=2), tmp_path / "unet.pt")
    with pytest.raises(CheckpointError, match="checkpoint has num_classes=7, config asks for num_classes=4"):
        load_network(tmp_path / "unet.pt", expected={"num_classes": 4})


def test_weights_that_do_not_fit_the_architecture(tmp_path: Path) -> None:
    snapshot = {
        "network": "synthseg.networks.unet.UNet",
        "init_args": {"in_channels": 1, "num_classes": 7, "base_width": 2},
        "state_dict": UNet(num_classes=7, base_width=4).state_dict(),
    }
    torch.save(snapshot, tmp_path / "wide.pt")
    with pytest.raises(
        CheckpointError,
        match=r"checkpoint has encoders\.0\.0\.0\.weight of shape 4x1x3x3, the network synthseg\.networks\.unet"
        r"\.UNet has 2x1x3x3",
    ):
        load_network(tmp_path / "wide.pt")


def test_only_synthseg_networks_are_built(tmp_path: Path) -> None:
    torch.save({"network": "os.system", "init_args": {}, "state_dict": {}}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="is not a synthseg network"):
        load_network(tmp_path / "x.pt")
