"""The index coding's value order (``model.generator.index_order``, docs/masks.md): ``paper`` puts the class
indices on [-1, 1] as they are, ``anatomical`` as background, CSF, GM, WM, edema, enhancing, NCR/NET, so that a
smooth edge between touching classes decodes to classes that lie between them, never to tumor at the brain's
edge. Round trips, the reals at lower levels of detail, the networks and snapshots that record the order,
generate-masks and the critic filter reading it, and a tiny run through the real ``train()``."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from synthseg.data.labels import INDEX_ORDERS, index_values, labels_to_net, net_to_labels
from synthseg.networks.pgan import PGANDiscriminator, PGANGenerator
from synthseg.progressive import GrowthStage

pytestmark = pytest.mark.usefixtures("single_thread")
BG, NCR, ED, ET, WM, GM, CSF = range(7)
TUMOR = {NCR, ED, ET}


def test_anatomical_places_and_round_trip():
    labels = torch.arange(7).view(1, 1, 7)
    # value k of 7 places: -1 + k / 3
    places = {"paper": [0, 1, 2, 3, 4, 5, 6], "anatomical": [0, 6, 4, 5, 3, 2, 1]}
    for order, expected in places.items():
        assert index_values(labels, 7, order).flatten().tolist() == expected
        net = labels_to_net(labels, 7, order)
        torch.testing.assert_close(net.flatten(), torch.tensor(expected, dtype=torch.float32) / 3 - 1)
        assert torch.equal(net_to_labels(net, 7, order).long(), labels)
    assert INDEX_ORDERS["anatomical"] == (BG, CSF, GM, WM, ED, ET, NCR)
    random = torch.randint(0, 7, (4, 9, 9))
    assert torch.equal(net_to_labels(labels_to_net(random, 7, "anatomical"), 7, "anatomical").long(), random)
    with pytest.raises(ValueError, match="index_order must be one of"):
        labels_to_net(random, 7, "alphabetical")
    with pytest.raises(ValueError, match="defined for 7 classes"):
        labels_to_net(random.clamp(max=3), 4, "anatomical")


@pytest.mark.parametrize("to", [WM, GM, CSF])
def test_a_smooth_edge_from_background_to_tissue_passes_no_tumor_class(to: int):
    # what a generator makes across an edge: every value between the two classes' values
    ramp = torch.linspace(0, 1, 101).view(1, 1, 1, 101)
    decoded = {}
    for order in ("paper", "anatomical"):
        low, high = labels_to_net(torch.tensor([[[BG, to]]]), 7, order).flatten()
        decoded[order] = set(net_to_labels(low + (high - low) * ramp, 7, order).flatten().tolist())
    assert decoded["paper"] >= TUMOR  # the paper's coding: a ring of every tumor class
    assert not decoded["anatomical"] & TUMOR
    assert decoded["anatomical"] <= {BG, CSF, GM, WM}


def test_lower_levels_of_detail_average_places_not_class_indices():
    from synthseg.models.pgan_reals import index_reals

    # 8x8, rows alternately background and GM: every 2x2 block at 4x4 is half of each, and its block
    # mean (the official dataset_tool's lower level of detail) is a place between the two
    labels = torch.tensor([BG, GM]).repeat(4).view(1, 8, 1).expand(1, 8, 8)
    stage = GrowthStage(images=0, lod=1.0, resolution=4, alpha=1.0, batch_size=1, tick_kimg=1.0)
    paper = net_to_labels(index_reals(labels, stage, 7, "average", "paper"), 7, "paper")
    anatomical = net_to_labels(index_reals(labels, stage, 7, "average", "anatomical"), 7, "anatomical")
    # paper: the mean of 0 and 5 is 2.5, rounded to even: 2, edema; anatomical: of places 0 and 2: 1, CSF
    assert paper.unique().tolist() == [ED]
    assert anatomical.unique().tolist() == [CSF]
    full = GrowthStage(images=0, lod=0.0, resolution=8, alpha=1.0, batch_size=1, tick_kimg=1.0)
    for lowres in ("average", "majority"):
        assert torch.equal(
            net_to_labels(index_reals(labels, full, 7, lowres, "anatomical"), 7, "anatomical").long(), labels
        )


def test_networks_record_the_order_and_refuse_it_with_onehot():
    small = dict(resolution=8, fmap_base=16, fmap_max=4)
    g = PGANGenerator(latent_dim=4, index_order="anatomical", **small)
    assert g.index_order == "anatomical" and g.init_args["index_order"] == "anatomical"
    assert PGANGenerator(latent_dim=4, **small).index_order == "paper"  # the official default
    with pytest.raises(ValueError, match="orders the index coding; label_encoding is onehot"):
        PGANDiscriminator(label_encoding="onehot", index_order="anatomical", **small)
    with pytest.raises(ValueError, match="index_order must be one of"):
        PGANGenerator(index_order="random", **small)
    with pytest.raises(ValueError, match="defined for 7 classes"):  # at construction, not at the first batch
        PGANDiscriminator(classes=4, index_order="anatomical", **small)
    from synthseg.models.pgan import PGAN

    adam = partial(torch.optim.Adam, lr=1e-3)
    with pytest.raises(ValueError, match="different index_order"):
        PGAN(g, PGANDiscriminator(**small), adam, adam)


def _write_snapshot(path: Path, order: str) -> PGANGenerator:
    from synthseg.checkpoint import save_network

    torch.manual_seed(0)
    g = PGANGenerator(resolution=8, latent_dim=4, fmap_base=16, fmap_max=4, index_order=order)
    with torch.no_grad():  # spread the outputs over all classes
        g.to_rgb["b8"].bias.fill_(0.0)
        g.to_rgb["b8"].weight.mul_(3.0)
    save_network(g, path, meta={"tick": 1, "kimg": 1.0, "dataset_size": 8, "resolution": 8})
    return g.eval()


def test_generate_masks_reads_a_snapshot_in_its_order(tmp_path: Path):
    from synthseg.data.pngio import read_png
    from synthseg.synth.generate_masks import GenerateMasksSettings, latents, run

    g = _write_snapshot(tmp_path / "snapshot.pt", "anatomical")
    run(GenerateMasksSettings(checkpoint=str(tmp_path / "snapshot.pt"), count=3, output=str(tmp_path / "m"),
                              device="cpu", progress=False, size=8))  # fmt: skip
    made = np.stack([read_png(p) for p in sorted((tmp_path / "m" / "labels").glob("*.png"))])
    with torch.no_grad():
        x = g(latents(0, 0, 3, 4))
    assert np.array_equal(made, net_to_labels(x, 7, "anatomical").numpy())
    assert not np.array_equal(made, net_to_labels(x, 7, "paper").numpy())


def test_the_critic_filter_codes_masks_in_the_critics_order():
    from synthseg.synth.critic import Critic

    d = PGANDiscriminator(resolution=8, fmap_base=16, fmap_max=4, index_order="anatomical")
    critic = Critic(network=d.eval(), resolution=8, alpha=1.0, source="test", origin="final")
    masks = np.random.default_rng(0).integers(0, 7, (2, 8, 8))
    torch.testing.assert_close(critic.encode(masks), labels_to_net(torch.from_numpy(masks), 7, "anatomical"))
    assert critic.describe()["index_order"] == "anatomical"


@pytest.mark.slow
def test_a_tiny_anatomical_run_through_train_and_its_snapshot(tmp_path: Path):
    from synthseg.synth.generate_masks import load_mask_generator
    from synthseg.train import train
    from tests.conftest import compose_train, write_dataset
    from tests.helpers.presets import PGAN_TINY as TINY

    data = write_dataset(tmp_path / "prepared", num_slices=24, size=16)
    cfg = compose_train(
        [*TINY, f"data.root={data}", "model.total_kimg=0.032", "model.generator.index_order=anatomical"],
        tmp_path,
    )
    assert cfg.model.discriminator.index_order == "anatomical"  # follows the generator's
    train(cfg)
    snapshot = sorted((tmp_path / "run" / "snapshots").glob("*.pt"))[-1]
    generator, meta = load_mask_generator(snapshot)
    assert generator.index_order == "anatomical" and meta["index_order"] == "anatomical"


def test_a_bad_order_in_the_config_is_one_line_naming_the_key(tmp_path: Path):
    from synthseg.errors import InputError
    from synthseg.train import train
    from tests.conftest import compose_train, write_dataset
    from tests.helpers.presets import PGAN_TINY as TINY

    data = write_dataset(tmp_path / "prepared", num_slices=8, size=16)
    cfg = compose_train([*TINY, f"data.root={data}", "model.generator.index_order=alphabetical"], tmp_path)
    with pytest.raises(InputError, match="model.generator.index_order must be one of paper, anatomical"):
        train(cfg)
    assert not (tmp_path / "run").exists()
