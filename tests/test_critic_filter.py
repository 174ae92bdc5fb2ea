"""The PGAN critic as a filter (``synthseg filter method=critic|both``): a threshold that reproduces a hand
calibration on the real validation maps, scores that do not depend on the batch, where the critic comes from
(the run's final one, or a snapshot's own with ``model.snapshot_critic``), and a trained run end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from synthseg.checkpoint import network_entry, safe_load, save_network
from synthseg.data.labels import labels_to_net, resize_labels
from synthseg.data.manifest import read_manifest
from synthseg.data.pngio import read_png
from synthseg.errors import InputError
from synthseg.networks.pgan import PGANDiscriminator, PGANGenerator
from synthseg.synth import filter as zfilter
from synthseg.synth import generate_masks as gm
from synthseg.synth.critic import load_critic
from tests.conftest import compose_train, write_dataset
from tests.helpers.presets import PGAN_TINY as TINY

NET = {"resolution": 16, "fmap_base": 32, "fmap_max": 8}


def fake_run(root: Path, with_entry: bool = True) -> tuple[Path, PGANDiscriminator]:
    """A PGAN run folder as training leaves it: a generator snapshot and checkpoints/last.ckpt holding the
    critic's weights (state_dict ``discriminator.*``), with the critic's entry or (before 0.3.0) without."""
    torch.manual_seed(0)
    gen = PGANGenerator(latent_dim=8, **NET)
    with torch.no_grad():
        gen.to_rgb["b16"].weight.mul_(3.0)
    critic = PGANDiscriminator(**NET).eval()
    meta = {"tick": 3, "kimg": 1.0, "resolution": 16, "alpha": 1.0, "dataset_size": 32}
    save_network(gen.eval(), root / "snapshots" / "network-snapshot-000001.pt", meta={**meta, "tick": 2})
    pgan = {"tick": 3, "dataset_size": 32, "generator": network_entry(gen, meta=meta)}
    if with_entry:
        pgan["discriminator"] = network_entry(critic, meta=meta)
    state = {f"discriminator.{k}": v for k, v in critic.state_dict().items()}
    state.update({f"generator_ema.{k}": v for k, v in gen.state_dict().items()})
    (root / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": state, "pgan": pgan}, root / "checkpoints" / "last.ckpt")
    return root, critic


@pytest.fixture
def setup(tmp_path: Path) -> dict:
    prepared = write_dataset(tmp_path / "prepared", num_slices=100, size=32)  # 10 val slices
    run, critic = fake_run(tmp_path / "run")
    masks = gm.run(
        gm.GenerateMasksSettings(
            checkpoint=str(run / "snapshots" / "network-snapshot-000001.pt"),
            count=30,
            output=str(tmp_path / "masks"),
            progress=False,
        )
    )
    return {"prepared": prepared, "run": run, "critic": critic, "masks": masks, "tmp": tmp_path}


def hand_scores(critic: PGANDiscriminator, masks: list[np.ndarray], held: float) -> np.ndarray:
    """The critic's scores with its minibatch-stddev map replaced by the constant ``held``, one mask at a time."""

    class Constant(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, torch.full_like(x[:, :1], held)], dim=1)

    original = critic.blocks["b4"].mbstd
    critic.blocks["b4"].mbstd = Constant()
    try:
        with torch.no_grad():
            return np.array([float(critic(encode(m))) for m in masks])
    finally:
        critic.blocks["b4"].mbstd = original


def encode(mask: np.ndarray) -> torch.Tensor:
    return labels_to_net(resize_labels(torch.from_numpy(mask.astype(np.int64))[None], 16), 7)


def held_by_hand(critic: PGANDiscriminator, reals: list[np.ndarray]) -> float:
    """Mean over consecutive groups of 4 reals of the minibatch stddev: the population std over the group of
    the critic's 4x4 features, + 1e-8 under the square root, averaged over channels and pixels."""
    captured: list[torch.Tensor] = []
    hook = critic.blocks["b4"].register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    values = []
    with torch.no_grad():
        for start in range(0, len(reals), 4):
            group = reals[start : start + 4]
            critic(torch.cat([encode(m) for m in group]))
            h = captured[-1].double()
            values.append(float(torch.sqrt(h.var(dim=0, unbiased=False) + 1e-8).mean()))
    hook.remove()
    return float(np.mean(values))


def test_critic_threshold_reproduces_a_hand_calibration(setup: dict) -> None:
    prepared, critic = setup["prepared"], setup["critic"]
    out = zfilter.run(
        zfilter.FilterSettings(
            masks=str(setup["masks"]), reference=str(prepared), output=str(setup["tmp"] / "out"),
            method="critic", critic_quantile=0.3, device="cpu", progress=False,
        )
    )  # fmt: skip
    summary = zfilter.read_summary(out)["critic"]
    m = read_manifest(prepared)
    val = [r for r in m.rows("val") if not m.empty[r]]
    reals = [read_png(prepared / m.label[r]) for r in val]
    held = held_by_hand(critic, reals)
    assert summary["held_stddev"] == pytest.approx(held, rel=1e-5)
    real_scores = hand_scores(critic, reals, held)
    threshold = float(np.quantile(real_scores, 0.3))
    assert summary["threshold"] == pytest.approx(threshold, rel=1e-5, abs=1e-6)
    assert summary["real_count"] == len(reals) and summary["origin"] == "final"
    masks = [read_png(setup["masks"] / "labels" / f"synth_{i:06d}.png") for i in range(30)]
    scores = hand_scores(critic, masks, held)
    assert zfilter.read_scores(out) == pytest.approx(scores, rel=1e-5, abs=1e-6)
    _, norms, kept = zfilter.read_norms(out)
    assert np.isnan(norms).all()  # the Z-score filter did not run
    assert kept.tolist() == (zfilter.read_scores(out) >= summary["threshold"]).tolist()
    assert summary["real_discarded_fraction"] == pytest.approx(np.mean(real_scores < threshold))
    assert 0 < kept.sum() < 30  # the random critic separates something: the test is not vacuous
    for name in ("critic_calibration.png", "critic_discarded.png"):
        assert (out / name).stat().st_size > 0
    assert not (out / "filter_calibration.png").exists()


@pytest.mark.slow
def test_scores_do_not_depend_on_the_batch(setup: dict) -> None:
    def scores(batch_size: int) -> np.ndarray:
        out = zfilter.run(
            zfilter.FilterSettings(
                masks=str(setup["masks"]), reference=str(setup["prepared"]), method="both",
                output=str(setup["tmp"] / f"out{batch_size}"), batch_size=batch_size, device="cpu", progress=False,
            )
        )  # fmt: skip
        return zfilter.read_scores(out)

    one, many = scores(1), scores(64)
    assert np.allclose(one, many, rtol=1e-5, atol=1e-6)
    summary = zfilter.read_summary(setup["tmp"] / "out64")
    # both: kept by both filters; each one's discarded fraction reported
    _, norms, kept = zfilter.read_norms(setup["tmp"] / "out64")
    both = (norms <= summary["threshold"]) & (many >= summary["critic"]["threshold"])
    assert kept.tolist() == both.tolist()
    assert summary["method"] == "both" and "zscore_discarded_fraction" in summary


def test_checkpoints_before_the_critic_entry_load_by_their_generator_arguments(tmp_path: Path) -> None:
    run, critic = fake_run(tmp_path / "run", with_entry=False)
    loaded = load_critic(run)  # a run folder: its checkpoints/last.ckpt
    assert loaded.origin == "final" and loaded.network.init_args["condition_style"] == "concat"
    for key, value in critic.state_dict().items():
        assert torch.equal(loaded.network.state_dict()[key], value)


def test_a_snapshot_without_a_critic_is_refused_in_one_line(setup: dict) -> None:
    snapshot = setup["run"] / "snapshots" / "network-snapshot-000001.pt"
    with pytest.raises(InputError, match="holds no PGAN critic .* model.snapshot_critic=true"):
        load_critic(snapshot)
    (setup["run"] / "checkpoints" / "last.ckpt").unlink()
    settings = zfilter.FilterSettings(
        masks=str(setup["masks"]), reference=str(setup["prepared"]), output=str(setup["tmp"] / "o"),
        method="critic", progress=False,
    )  # fmt: skip
    with pytest.raises(InputError, match="no checkpoints/last.ckpt .* give critic=PATH"):
        zfilter.run(settings)


@pytest.mark.slow
def test_a_trained_conditional_run_filters_with_its_own_critic(tmp_path: Path) -> None:
    from synthseg.train import train

    data = write_dataset(tmp_path / "prepared", num_slices=60, size=16)
    overrides = [
        *TINY, f"data.root={data}", "model.total_kimg=0.048", "model.swd_images=0",
        "model.condition=slice", "model.label_encoding=onehot", "model.snapshot_critic=true",
    ]  # fmt: skip
    train(compose_train(overrides, tmp_path))
    run = tmp_path / "run"
    last = safe_load(run / "checkpoints" / "last.ckpt")
    assert last["pgan"]["discriminator"]["init_args"]["condition"] == "slice"
    snapshot = max((run / "snapshots").glob("*.pt"), key=lambda p: p.stat().st_mtime)  # the last tick's
    own = load_critic(snapshot)
    assert own.origin == "snapshot" and own.network.label_encoding == "onehot"
    final = load_critic(run)
    for key, value in final.network.state_dict().items():  # the last tick's snapshot and last.ckpt agree
        assert torch.equal(own.network.state_dict()[key], value)
    masks = gm.run(
        gm.GenerateMasksSettings(
            checkpoint=str(snapshot),
            count=12,
            output=str(tmp_path / "masks"),
            reference=str(data),
            progress=False,
        )
    )
    out = zfilter.run(
        zfilter.FilterSettings(
            masks=str(masks), reference=str(data), output=str(tmp_path / "out"), method="both",
            reference_by="position", threshold_quantile=1.0, device="cpu", progress=False,
        )
    )  # fmt: skip
    summary = zfilter.read_summary(out)
    assert summary["critic"]["origin"] == "snapshot" and summary["critic"]["condition"] == "slice"
    assert summary["reference_by"] == "position" and summary["synthetic_count"] == 12
    assert np.isfinite(zfilter.read_scores(out)).all()
