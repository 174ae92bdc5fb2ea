"""``synthseg quality`` and Table 3 with several MR sequences (issue 17 with issue 16): the U-Net extractor reads
every sequence it was trained on, normalised as in training; diversity per sequence; memorisation on the mean
per-sequence correlation; Inception one sequence at a time; one line when a set lacks a sequence."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from synthseg.checkpoint import save_network
from synthseg.errors import InputError
from synthseg.metrics import diversity, memorisation
from synthseg.metrics.features import Extractor, build_extractor
from synthseg.metrics.quality import extractor_metrics
from synthseg.metrics.slices import DatasetSlices
from synthseg.networks.unet import UNet
from tests.conftest import make_run, measure_quality, run_report, write_dataset

pytestmark = pytest.mark.usefixtures("single_thread", "no_network")

FAST = {"pairs": 20, "kid_subsets": 5, "search_size": 8}
TWO = ("t1c", "flair")


@pytest.fixture
def two(tmp_path: Path) -> dict[str, Path]:
    """A [t1c, flair] real set (64 px), a [t1c, flair] synthetic set (32 px) and a [t1c, flair] U-Net run."""
    real = write_dataset(tmp_path / "real", num_slices=50, size=64, sequences=TWO)
    synthetic = write_dataset(
        tmp_path / "synthetic", num_slices=24, size=32, source="synthetic", seed=1, sequences=TWO
    )
    torch.manual_seed(0)
    run = make_run(tmp_path / "runs" / "real", mix="full_real", classes=7, seed=0, dice_error=0.1,
                   data_root=real, resolution=None, sequences=TWO)  # fmt: skip
    return {"real": real, "synthetic": synthetic, "run": run}


# ------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_two_sequences_through_quality_end_to_end(two: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "q"
    result = measure_quality(
        synthetic=two["synthetic"], real=two["real"], output=out, unet=two["run"], **FAST
    )
    saved = json.loads((out / "quality.json").read_text())
    assert saved["sequences"] == ["t1c", "flair"] and saved["size"] == 32
    feats = saved["features"]
    assert feats["extractor"] == "unet" and feats["sequences"] == ["t1c", "flair"]
    assert feats["feature_dim"] == 62 and "by_sequence" not in feats  # the U-Net reads both at once
    for key in ("fd_unet", "kid_unet", "precision_unet", "recall_unet"):
        assert math.isfinite(feats[key])
    div = saved["diversity"]
    per = div["by_sequence"]
    assert (
        list(per) == ["t1c", "flair"] and per["t1c"]["ms_ssim_synthetic"] != per["flair"]["ms_ssim_synthetic"]
    )
    for which in ("ms_ssim_synthetic", "ms_ssim_real"):
        assert div[which] == pytest.approx((per["t1c"][which] + per["flair"][which]) / 2)
    assert "each of ['t1c', 'flair'] on its own" in div["note"]
    memo = saved["memorisation"]
    assert memo["synthetic_count"] == 24 and -1 <= memo["correlation"]["synthetic"]["max"] <= 1
    assert (out / "closest_pairs.png").is_file()
    assert set(saved["seconds_by_stage"]) >= {"load", "diversity", "memorisation", "features", "fd_kid",
                                               "precision_recall"}  # fmt: skip
    assert result["features"] == feats


@pytest.mark.slow
def test_fd_of_a_multi_sequence_set_against_itself_is_zero(two: dict[str, Path], tmp_path: Path) -> None:
    same = two["synthetic"]  # every slice a training slice: both samples are the whole set (empty ones too)
    result = measure_quality(
        synthetic=same, real=same, output=tmp_path / "q", unet=two["run"], reference_empty="include", **FAST
    )
    feats = result["features"]
    assert feats["fd_unet"] == pytest.approx(0.0, abs=1e-6)
    assert feats["precision_unet"] == 1.0 and feats["recall_unet"] == 1.0
    assert result["diversity"]["ms_ssim_synthetic"] == result["diversity"]["ms_ssim_real"]


def test_the_unet_reads_each_sequence_normalised_as_in_its_training(two: dict[str, Path]) -> None:
    extractor = build_extractor("unet", two["run"])
    # make_run records train_max [1500, 1600] and train_mean [0.1, 0.1] for [t1c, flair] in results.json.
    assert extractor.sequences == TWO and extractor.train_max == (1500.0, 1600.0)
    assert extractor.train_mean == (0.1, 0.1) and extractor.channels == 2
    seen: list[torch.Tensor] = []

    class Recorder(nn.Module):
        num_features = 2

        def __init__(self) -> None:
            super().__init__()
            self.anchor = nn.Parameter(torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.clone())
            return x.mean(dim=(2, 3)) + torch.randn(len(x), 2) * 1e-3

    extractor.module = Recorder()
    real = torch.full((6, 2, 16, 16), 800.0)
    real[:, 1] = 400.0
    extractor_metrics(
        extractor, real, real.clone(), top=(1500.0, 1600.0), seed=0, k=2, subsets=2, batch_size=64,
        sequences=TWO,
    )  # fmt: skip
    assert torch.allclose(seen[0][:, 0], torch.tensor(800 / 1500 - 0.1))
    assert torch.allclose(seen[0][:, 1], torch.tensor(400 / 1600 - 0.1))


def test_the_channels_follow_the_unets_order_not_the_folders(two: dict[str, Path]) -> None:
    folder_order, unet_order = DatasetSlices(two["real"]), DatasetSlices(two["real"])
    folder_order.use(TWO, "test")
    unet_order.use(("flair", "t1c"), "test")
    rows = folder_order.rows[:3]
    assert torch.equal(unet_order.load(rows, 64)[1], folder_order.load(rows, 64)[1][:, [1, 0]])
    assert unet_order.sequences == ("flair", "t1c")


# ------------------------------------------------------------------------------------- missing sequences
def test_a_set_missing_a_sequence_is_one_line_naming_the_folder_and_the_sequence(
    two: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from synthseg.cli import main

    t1c_only = write_dataset(tmp_path / "t1c_only", num_slices=24, size=32, source="synthetic", seed=2)
    with pytest.raises(
        InputError, match=r"synthetic=.*t1c_only: holds the sequences \['t1c'\], not \['flair'\]"
    ):
        measure_quality(synthetic=t1c_only, real=two["real"], output=tmp_path / "q", unet=two["run"], **FAST)
    with pytest.raises(InputError, match=r"real=.*t1c_only: holds the sequences \['t1c'\], not \['flair'\]"):
        measure_quality(
            synthetic=two["synthetic"], real=t1c_only, output=tmp_path / "q", unet=two["run"], **FAST
        )
    # Without an extractor the synthetic set's sequences are measured: the real set must hold them.
    with pytest.raises(InputError, match=r"real=.*not \['flair'\] \(the synthetic set .* holds"):
        measure_quality(
            synthetic=two["synthetic"], real=t1c_only, output=tmp_path / "q", extractor=None, **FAST
        )
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["quality", f"synthetic={t1c_only}", f"real={two['real']}", f"unet={two['run']}",
              f"output={tmp_path / 'q'}"])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "t1c_only" in err[0] and "['flair']" in err[0] and "results.json reads" in err[0]
    assert not (tmp_path / "q").exists()


@pytest.mark.slow
def test_a_snapshot_reads_its_recorded_sequences_or_the_synthetic_sets(
    two: dict[str, Path], tmp_path: Path
) -> None:
    torch.manual_seed(0)
    recorded = tmp_path / "recorded.pt"
    save_network(UNet(1, 7, base_width=2), recorded, meta={"sequences": ["flair"]})
    result = measure_quality(
        synthetic=two["synthetic"], real=two["real"], output=tmp_path / "a", unet=recorded, **FAST
    )
    assert result["sequences"] == ["flair"] and list(result["diversity"]["by_sequence"]) == ["flair"]
    bare = tmp_path / "bare.pt"
    save_network(UNet(2, 7, base_width=2), bare)  # two channels, no meta.sequences: the synthetic set's two
    assert measure_quality(
        synthetic=two["synthetic"], real=two["real"], output=tmp_path / "b", unet=bare, **FAST
    )["sequences"] == list(TWO)
    three = write_dataset(tmp_path / "three", num_slices=12, size=32, source="synthetic",
                          sequences=("t1", "t1c", "flair"))  # fmt: skip
    with pytest.raises(InputError, match=r"2 input channels that records no meta.sequences.*three holds"):
        measure_quality(synthetic=three, real=two["real"], output=tmp_path / "c", unet=bare, **FAST)
    wrong = tmp_path / "wrong.pt"
    save_network(UNet(2, 7, base_width=2), wrong, meta={"sequences": ["t1c"]})
    with pytest.raises(InputError, match=r"wrong.pt: the U-Net has 2 input channels but names the sequences"):
        build_extractor("unet", wrong)


# ------------------------------------------------------------------------------------------ definitions
def test_inception_measures_each_sequence_on_its_own_and_reports_their_mean() -> None:
    seen: list[int] = []

    class Gray(nn.Module):
        num_features = 3

        def __init__(self) -> None:
            super().__init__()
            self.anchor = nn.Parameter(torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.shape[1])
            flat = x.flatten(1)
            return torch.stack([flat.mean(1), flat.std(1), flat.amax(1)], dim=1)

    fake = Extractor("inception", Gray(), "unit", None, None, "weights.pth")
    gen = torch.Generator().manual_seed(0)
    real = torch.rand(20, 2, 16, 16, generator=gen) * 1000
    synthetic = real.clone()
    synthetic[:, 1] = torch.rand(20, 16, 16, generator=gen) * 300  # the second sequence differs
    out = extractor_metrics(
        fake, real, synthetic, top=(1000.0, 1000.0), seed=0, k=2, subsets=3, batch_size=8, sequences=TWO
    )
    assert set(seen) == {1}  # one gray image at a time
    per = out["by_sequence"]
    assert per["t1c"]["fd_inception"] == pytest.approx(0.0, abs=1e-6) and per["flair"]["fd_inception"] > 0
    assert out["fd_inception"] == pytest.approx(
        (per["t1c"]["fd_inception"] + per["flair"]["fd_inception"]) / 2
    )
    assert out["precision_inception"] == pytest.approx(
        (per["t1c"]["precision_inception"] + per["flair"]["precision_inception"]) / 2
    )
    assert "one sequence at a time" in out["note"] and out["sequences"] == ["t1c", "flair"]


def test_image_correlation_with_several_sequences_is_the_mean_of_the_per_sequence_ones() -> None:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 2, 8, 8, generator=gen), torch.rand(4, 2, 8, 8, generator=gen)
    b[0] = a[0]
    b[1, 1] = 5.0  # a constant sequence correlates 0
    got = memorisation.standardize(a) @ memorisation.standardize(b).T
    for i in range(3):
        for j in range(4):
            per = []
            for s in range(2):
                x, y = a[i, s].flatten().double().numpy(), b[j, s].flatten().double().numpy()
                per.append(0.0 if y.std() == 0 else np.corrcoef(x, y)[0, 1])
            assert float(got[i, j]) == pytest.approx(np.mean(per), abs=1e-5)
    assert float(got[0, 0]) == pytest.approx(1.0, abs=1e-5)
    # One sequence: the plain Pearson correlation, as before.
    one = memorisation.standardize(a[:, :1]) @ memorisation.standardize(b[:, :1]).T
    assert float(one[1, 2]) == pytest.approx(
        np.corrcoef(a[1, 0].flatten(), b[2, 0].flatten())[0, 1], abs=1e-5
    )


def test_ms_ssim_per_sequence_equals_each_sequence_measured_alone() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(12, 2, 32, 32, generator=gen)
    images[:, 1] = images[:1, 1]  # the second sequence: one image repeated, MS-SSIM 1
    values, scales = diversity.ms_ssim_by_channel(images, pairs=30, seed=3)
    alone = [diversity.mean_ms_ssim(images[:, c : c + 1], pairs=30, seed=3)[0] for c in range(2)]
    assert values == pytest.approx(alone) and values[1] == pytest.approx(1.0) and scales == 2
    assert diversity.mean_ms_ssim(images, pairs=30, seed=3)[0] == pytest.approx(sum(alone) / 2)


# ------------------------------------------------------------------------------------------------ report
@pytest.mark.slow
def test_the_report_has_table3_for_a_multi_sequence_sweep(two: dict[str, Path], tmp_path: Path) -> None:

    out = tmp_path / "report"
    summary = run_report({
        "runs": str(two["run"].parent), "output": str(out), "bootstrap": {"samples": 20},
        "figures": {"enabled": False, "synthetic_full": str(two["synthetic"]), "real": str(two["real"])},
        "quality": FAST,
    })  # fmt: skip
    assert {"table3.md", "table3.csv"} <= {f["file"] for f in summary["files"]}
    (entry,) = json.loads((out / "metrics.json").read_text())["synthetic_quality"]
    assert entry["sequences"] == ["t1c", "flair"] and entry["extractor"] == "unet"
    for key in (
        "fd",
        "kid",
        "precision",
        "recall",
        "ms_ssim_synthetic",
        "ms_ssim_real",
        "nearest_real_dice_median",
    ):
        assert isinstance(entry[key], float) and math.isfinite(entry[key])
    table = (out / "table3.md").read_text()
    assert "| set | sequences |" in table and "| full | t1c+flair |" in table
    assert "t1c+flair" in (out / "table3.csv").read_text().splitlines()[1]
