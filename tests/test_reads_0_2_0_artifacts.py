"""What synthseg 0.2.0 wrote still loads: a prepared dataset, PGAN snapshot and training checkpoint, SPADE
checkpoint and a U-Net run (tests/fixtures/v0_2_0/README.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from synthseg.checkpoint import load_network, load_unet, read_unet_results
from synthseg.data.manifest import read_manifest
from synthseg.data.pngio import read_png
from synthseg.networks.pgan import PGANGenerator
from synthseg.train import train
from tests.conftest import compose_train

FIXTURES = Path(__file__).parent / "fixtures" / "v0_2_0"
PGAN_TINY = [
    "model=pgan",
    "model.generator.resolution=16",
    "model.generator.latent_dim=16",
    "model.generator.fmap_base=64",
    "model.generator.fmap_max=16",
    "model.stable_kimg=0.008",
    "model.transition_kimg=0.008",
    "model.batch_sizes={4: 4, 8: 4, 16: 4}",
    "model.tick_kimg={4: 0.008, 8: 0.008, 16: 0.008}",
    "model.swd_images=0",
    "model.grid_size=[1, 1]",
    "data.resolution=16",
    "torch_threads=1",
]


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    """A copy: training builds its slice cache inside the dataset folder."""
    return Path(shutil.copytree(FIXTURES / "prepared", tmp_path / "prepared"))


def test_prepared_dataset_reads_and_trains(prepared: Path, tmp_path: Path) -> None:
    manifest = read_manifest(prepared)
    assert len(manifest) == 18 and manifest.sequences == ("t1c",)
    cfg = compose_train(
        ["model=unet", "debug=tiny_unet", f"data.root={prepared}", "trainer.max_epochs=1"], tmp_path
    )
    metrics = train(cfg)
    assert np.isfinite(metrics["test/dice_error"])


def test_pgan_snapshot_loads_and_generates() -> None:
    net, meta = load_network(FIXTURES / "pgan" / "network-snapshot.pt")
    assert isinstance(net, PGANGenerator) and meta["resolution"] == 16
    with torch.no_grad():
        out = net(torch.randn(2, 16))
    assert out.shape == (2, 1, 16, 16) and torch.isfinite(out).all()


def test_pgan_training_checkpoint_resumes(prepared: Path, tmp_path: Path) -> None:
    ckpt = Path(shutil.copy(FIXTURES / "pgan" / "last.ckpt", tmp_path / "last.ckpt"))
    cfg = compose_train(
        [*PGAN_TINY, f"data.root={prepared}", "model.total_kimg=0.056", f"ckpt_path={ckpt}"], tmp_path
    )
    train(cfg)
    kimg = [float(row.split(",")[1]) for row in (tmp_path / "run" / "swd.csv").read_text().splitlines()[1:]]
    # The ticks of 0.2.0 come back from the checkpoint, and the run goes on from 0.048 kimg.
    assert kimg[:3] == pytest.approx([0.016, 0.032, 0.048]) and kimg[-1] > 0.048 and len(kimg) > 3


def test_spade_checkpoint_paints_label_maps(prepared: Path, tmp_path: Path) -> None:
    from synthseg.synth.generate_images import GenerateImagesSettings, run

    checkpoint = str(FIXTURES / "spade" / "last.ckpt")
    run(
        GenerateImagesSettings(
            checkpoint=checkpoint, masks=str(prepared), output=str(tmp_path / "painted"), progress=False
        )
    )
    manifest = read_manifest(tmp_path / "painted")
    image = read_png(tmp_path / "painted" / manifest.image[0])
    assert image.dtype == np.uint16 and image.shape == (32, 32)


def test_unet_run_loads_from_a_moved_folder() -> None:
    results = read_unet_results(FIXTURES / "unet" / "results.json")
    assert results is not None and json.dumps(results)
    net = load_unet(FIXTURES / "unet" / "results.json", results)
    with torch.no_grad():
        out = net(torch.zeros(1, 1, 16, 16))
    assert out.shape == (1, 7, 16, 16)
