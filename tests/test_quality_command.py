"""``synthseg quality``, its hooks in synthesize / the U-Net test step / the report (issue 17)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from synthseg.checkpoint import save_network
from synthseg.errors import InputError
from synthseg.networks.unet import UNet
from tests.conftest import measure_quality, run_report, write_dataset

pytestmark = pytest.mark.usefixtures("single_thread", "no_network")

FAST = {"pairs": 20, "kid_subsets": 5, "search_size": 8}


@pytest.fixture
def sets(tmp_path: Path) -> dict[str, Path]:
    real = write_dataset(tmp_path / "real", num_slices=50, size=64)
    synthetic = write_dataset(tmp_path / "synthetic", num_slices=24, size=32, source="synthetic", seed=1)
    torch.manual_seed(0)
    unet = tmp_path / "unet.pt"
    save_network(UNet(1, 7, base_width=2), unet)
    return {"real": real, "synthetic": synthetic, "unet": unet}


@pytest.mark.slow
def test_quality_writes_every_metric_and_figure(sets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "quality"
    result = measure_quality(
        synthetic=sets["synthetic"], real=sets["real"], output=out, unet=sets["unet"], **FAST
    )
    saved = json.loads((out / "quality.json").read_text())
    # No PGAN run behind the fixture: the PGAN default (empty maps never trained on) leaves the 5 empty
    # real training slices out of the reference.
    assert saved["size"] == 32 and saved["synthetic_count"] == 24 and saved["real_count"] == 35
    assert saved["reference_empty"]["rule"] == "exclude" and saved["reference_empty"]["empty_left_out"] == 5
    feats = saved["features"]
    assert feats["extractor"] == "unet" and feats["feature_dim"] == 62
    for key in ("fd_unet", "kid_unet", "precision_unet", "recall_unet"):
        assert math.isfinite(feats[key])
    assert 0 <= feats["precision_unet"] <= 1 and feats["kid_subset_size"] == 24
    assert saved["diversity"]["scales"] == 2 and "2 of 5 scales" in saved["diversity"]["note"]
    memo = saved["memorisation"]
    assert saved["real_search_count"] == 35
    assert len(memo["closest"]) == 8 and memo["synthetic_count"] == 24
    assert set(saved["label_maps"]["fragmentation"]) == {"NCR/NET", "edema", "enhancing"}
    assert (
        math.isfinite(saved["label_maps"]["swd"]["avg"])
        and saved["label_maps"]["filter_discard_rate"] is None
    )
    assert (out / "class_areas.png").is_file() and (out / "closest_pairs.png").is_file()
    assert result["features"] == feats


@pytest.mark.slow
def test_quality_is_seeded(sets: dict[str, Path], tmp_path: Path) -> None:
    a = measure_quality(
        synthetic=sets["synthetic"],
        real=sets["real"],
        output=tmp_path / "a",
        unet=sets["unet"],
        max_images=16,
        **FAST,
    )
    b = measure_quality(
        synthetic=sets["synthetic"],
        real=sets["real"],
        output=tmp_path / "b",
        unet=sets["unet"],
        max_images=16,
        **FAST,
    )
    for result in (a, b):
        result.pop("seconds")
    assert a["features"] == b["features"] and a["memorisation"] == b["memorisation"]
    assert a["synthetic_count"] == 16


@pytest.mark.slow
def test_a_planted_copy_is_counted_and_shown_first(sets: dict[str, Path], tmp_path: Path) -> None:
    # A synthetic set made of the real training slices themselves: every pair is a copy.
    copy = write_dataset(tmp_path / "copy", num_slices=50, size=64)
    result = measure_quality(synthetic=copy, real=sets["real"], output=tmp_path / "q", extractor=None, **FAST)
    memo = result["memorisation"]
    assert memo["dice"]["synthetic"]["median"] == pytest.approx(1.0)
    # The 5 blank training slices (every 7th) are left out of the reference (the PGAN's default never saw
    # one), so their copies find no empty map to match; they are constant images besides (no correlation).
    assert memo["synthetic_above_dice"] == 35
    assert memo["synthetic_above_both"] == 35
    assert memo["closest"][0]["synthetic"] == memo["closest"][0]["real"]
    assert "features" not in result


@pytest.mark.slow
def test_discard_rate_comes_from_the_synthesize_record(sets: dict[str, Path], tmp_path: Path) -> None:
    record = {"synthesize": {"filter": {"synthetic_discarded_fraction": 0.25}}}
    (sets["synthetic"] / "prepare.json").write_text(json.dumps(record))
    result = measure_quality(
        synthetic=sets["synthetic"], real=sets["real"], output=tmp_path / "q", extractor=None, **FAST
    )
    assert result["label_maps"]["filter_discard_rate"] == 0.25


def test_inception_without_a_local_weights_file_is_one_line_saying_where_to_put_it(
    sets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from synthseg.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["quality", f"synthetic={sets['synthetic']}", f"real={sets['real']}", "extractor=inception",
              f"output={tmp_path / 'q'}"])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "extractor_weights=PATH" in err[0] and "pt_inception" in err[0]
    assert not (tmp_path / "q").exists()


def test_bad_inputs_are_one_clear_error(sets: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unet=RUN"):
        measure_quality(synthetic=sets["synthetic"], real=sets["real"], output=tmp_path / "q")
    with pytest.raises(InputError, match="manifest not found"):
        measure_quality(synthetic=tmp_path, real=sets["real"], output=tmp_path / "q", extractor=None)
    odd = write_dataset(tmp_path / "odd", num_slices=10, size=48, source="synthetic")
    with pytest.raises(InputError, match="one must divide the other"):
        measure_quality(synthetic=odd, real=sets["real"], output=tmp_path / "q", extractor=None)


@pytest.mark.slow
def test_cli_runs_the_quality_command(sets: dict[str, Path], tmp_path: Path, capsys) -> None:
    from synthseg.cli import main

    main(["quality", f"synthetic={sets['synthetic']}", f"real={sets['real']}", f"unet={sets['unet']}",
          f"output={tmp_path / 'q'}", "pairs=10", "kid_subsets=3", "search_size=8"])  # fmt: skip
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {
        "fd_unet",
        "kid_unet",
        "precision",
        "recall",
        "ms_ssim_synthetic",
        "nearest_real_dice_median",
    } <= set(line)
    # Beside each figure, the same for two real halves and the synthetic set at their n; the class intensities.
    assert {"kid_unet_real_baseline", "kid_unet_at_baseline_n", "precision_real_baseline", "fd_inf_unet",
            "nearest_real_dice_median_real_baseline", "ms_ssim_synthetic_real_baseline", "baseline_n"} <= set(line)  # fmt: skip
    assert set(line["class_intensity"]["t1c"]) == {
        "distance_over_real_wm", "order_real", "order_synthetic", "target_met"
    }  # fmt: skip


def test_the_unet_refuses_an_unknown_hd95_empty_rule() -> None:
    from functools import partial

    from synthseg.models.unet import UNetModule

    with pytest.raises(ValueError, match="hd95_empty must be one of"):
        UNetModule(UNet(1, 7, base_width=2), partial(torch.optim.Adam, lr=1e-3), hd95_empty="nan")


# ------------------------------------------------------------------------------------- U-Net test step
def test_unet_test_writes_hd95_per_subject_and_region(tmp_path: Path) -> None:
    from synthseg.train import train
    from tests.conftest import compose_train
    from tests.helpers.presets import UNET_SMALL as SMALL

    data = write_dataset(tmp_path / "prepared")
    cfg = compose_train([*SMALL, f"data.root={data}", "trainer.max_epochs=1"], tmp_path)
    metrics = train(cfg)
    assert {"test/hd95_WT", "test/hd95_TC", "test/hd95_ET"} <= set(metrics)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    hd = results["per_case"]["Brats18_T_7_1"]["hd95"]
    assert len(hd) == 3 and all(v >= 0 and math.isfinite(v) for v in hd)
    # The fixture's test subject Brats18_T_7_1 has no training slice (its others are validation): 3-D.
    assert (
        results["hd95_mode"] == "3d" and results["hd95_empty"] == "brats" and "1 mm" in results["hd95_unit"]
    )
    counts = results["per_case"]["Brats18_T_7_1"]["hd95_one_side_empty"]
    assert len(counts) == 3 and all(isinstance(c, int) and c >= 0 for c in counts)
    assert metrics["test/hd95_WT"] == pytest.approx(hd[0])


# ------------------------------------------------------------------------------------------- report
@pytest.mark.slow
def test_report_gains_table3_hd95_and_metrics_json(sets: dict[str, Path], tmp_path: Path) -> None:
    from tests.conftest import make_run

    runs = tmp_path / "runs"
    per_case = lambda hd: {  # noqa: E731
        s: {"soft_intersection": [90, 1, 2, 3, 4, 5, 6], "soft_total": [200] + [10] * 6,
            "hard_intersection": [90, 1, 2, 3, 4, 5, 6], "hard_total": [200] + [10] * 6,
            "region_intersection": [6, 4, 3], "region_total": [30, 20, 10], "hd95": [hd + i, hd, hd],
            "hd95_one_side_empty": [i, 0, 1]}
        for i, s in enumerate(("A", "B", "C"))
    }  # fmt: skip
    make_run(runs / "real", mix="full_real", classes=7, seed=0, dice_error=0.1, data_root=sets["real"],
             per_case=per_case(4.0), resolution=16)  # fmt: skip
    make_run(runs / "syn", mix="full_syn8960", classes=7, seed=0, dice_error=0.1, data_root=sets["real"],
             per_case=per_case(2.0), resolution=32)  # fmt: skip
    out = tmp_path / "report"
    summary = run_report({
        "runs": str(runs), "output": str(out), "bootstrap": {"samples": 50},
        "figures": {"enabled": False, "synthetic_full": str(sets["synthetic"]), "real": str(sets["real"])},
        "quality": {"max_images": 2000, **FAST},
    })  # fmt: skip
    assert {"table3.md", "table3.csv", "metrics.json"} <= {f["file"] for f in summary["files"]}
    metrics = json.loads((out / "metrics.json").read_text())
    (entry,) = metrics["synthetic_quality"]
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
    assert entry["extractor"] == "unet" and entry["set"] == "full"
    segmentation = {e["mix"]: e for e in metrics["segmentation"]}
    assert segmentation["full_real"]["hd95_wt"] == pytest.approx(5.0)  # mean of 4, 5, 6
    assert segmentation["full_syn8960"]["hd95_et"] == pytest.approx(2.0)
    rows = {(r["mix"], r["metric"]): r for r in _csv(out / "table2.csv")}
    assert float(rows[("full_real", "hd95_WT")]["estimate"]) == pytest.approx(5.0)
    assert float(rows[("full_syn8960", "hd95_TC")]["diff"]) == pytest.approx(-2.0)
    assert segmentation["full_real"]["hd95_wt_one_side_empty"] == 3  # 0 + 1 + 2 slices over the subjects
    assert float(rows[("full_real", "hd95_WT_one_side_empty")]["estimate"]) == pytest.approx(1.0)
    table2 = (out / "table2.md").read_text()
    assert "hd95_WT (mm)" in table2 and "hd95_WT_one_side_empty (slices)" in table2
    # Every synthetic-vs-real figure has its real-vs-real baseline and its value at the baseline's n.
    for key in ("swd", "area_distance", "fd", "kid", "precision", "recall", "ms_ssim_synthetic",
                "nearest_real_dice_median"):  # fmt: skip
        for suffix in ("_at_baseline_n", "_real_baseline"):
            assert isinstance(entry[key + suffix], float) and math.isfinite(entry[key + suffix]), key + suffix
    assert "fd_inf_real_baseline" in entry and entry["baseline_n"] >= 10 and entry["feature_dim"] == 62
    assert entry["reference_empty"] == "exclude" and entry["class_intensity"]["by_sequence"]["t1c"]
    table3 = (out / "table3.md").read_text()
    assert "| FD-U-Net | FD∞-U-Net | KID-U-Net |" in table3 and "## Class intensity" in table3
    # The full_real U-Net segments the synthetic images and the real test slices (label agreement).
    assert "| NN Dice | U-Net Dice | copies |" in table3
    assert 0 <= entry["label_agreement"] <= 1 and 0 <= entry["label_agreement_real"] <= 1
    row = next(line for line in table3.splitlines() if line.startswith("| full |"))
    kid = f"{entry['kid_at_baseline_n']:.3g} / {entry['kid_real_baseline']:.3g}"
    assert f"| {kid} |" in row
    assert f"| {entry['label_agreement']:.3g} / {entry['label_agreement_real']:.3g} |" in row
    csv_row = _csv(out / "table3.csv")[0]
    assert float(csv_row["kid_real_baseline"]) == pytest.approx(entry["kid_real_baseline"])
    saved = json.loads((out / "quality" / "full" / "quality.json").read_text())
    # The full_real U-Net trained at 16 px: the 32 px slices are block-averaged to 16 before its encoder.
    assert saved["size"] == 32 and saved["features"]["feature_size"] == 16


def _csv(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_report_without_hd95_keeps_table2_as_before(sets: dict[str, Path], tmp_path: Path) -> None:
    from tests.conftest import make_run

    make_run(
        tmp_path / "runs" / "r", mix="full_real", classes=7, seed=0, dice_error=0.1, data_root=sets["real"]
    )
    out = tmp_path / "report"
    run_report({"runs": str(tmp_path / "runs"), "output": str(out), "bootstrap": {"samples": 20},
                  "figures": {"enabled": False}})  # fmt: skip
    assert not any(r["metric"].startswith("hd95") for r in _csv(out / "table2.csv"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["synthetic_quality"] == [] and metrics["segmentation"][0]["hd95_wt"] is None
    assert not (out / "table3.md").exists()


@pytest.mark.slow
def test_synthesize_runs_the_extractor_free_quality(tmp_path: Path) -> None:
    from synthseg.synth import synthesize
    from tests.conftest import tiny_snapshot, tiny_spade_snapshot

    prepared = write_dataset(tmp_path / "prepared", num_slices=40, size=32)
    out = tmp_path / "synthetic"
    settings = synthesize.SynthesizeSettings(
        pgan=tiny_snapshot(tmp_path / "pgan.pt", size=32), spade=tiny_spade_snapshot(tmp_path / "spade.pt"),
        reference=prepared, count=12, output=out, threshold=1e9, device="cpu", progress=False,
    )  # fmt: skip
    synthesize.run(settings)
    saved = json.loads((out / "quality" / "quality.json").read_text())
    assert "features" not in saved and saved["synthetic_count"] == 12
    assert saved["label_maps"]["filter_discard_rate"] == 0.0
    assert np.isfinite(saved["diversity"]["ms_ssim_synthetic"])


@pytest.mark.slow
def test_the_metrics_import_neither_lightning_nor_the_lightning_modules() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import synthseg.metrics.quality, synthseg.metrics.features, synthseg.metrics.hausdorff\n"
        "import synthseg.report.figures, synthseg.report.runs  # the run-folder route of the extractor\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')\n"
        "       or m.startswith('synthseg.models')]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_inception_with_weights_but_without_torch_fidelity_says_how_to_install(tmp_path: Path) -> None:
    try:
        import torch_fidelity  # noqa: F401

        pytest.skip("torch-fidelity is installed here")
    except ImportError:
        pass
    from synthseg.metrics.features import build_extractor

    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    weights.write_bytes(b"not used")
    with pytest.raises(InputError, match=r'pip install -e "\.\[inception\]"'):
        build_extractor("inception", None, str(weights))


def test_a_lightning_checkpoint_passed_as_unet_is_one_clear_error(
    sets: dict[str, Path], tmp_path: Path
) -> None:
    ckpt = tmp_path / "best.ckpt"
    torch.save({"state_dict": {"net.head.weight": torch.zeros(1)}}, ckpt)
    with pytest.raises(
        InputError, match="best.ckpt: neither a synthseg network snapshot nor a GAN training checkpoint"
    ):
        measure_quality(synthetic=sets["synthetic"], real=sets["real"], output=tmp_path / "q", unet=ckpt)


@pytest.mark.slow
def test_a_zscore_unet_sees_each_slice_z_scored_as_in_training(sets: dict[str, Path], tmp_path: Path) -> None:
    from synthseg.data.dataset import zscore_brain
    from synthseg.metrics.features import build_extractor
    from synthseg.metrics.quality import input_scaler

    torch.manual_seed(0)
    path = tmp_path / "zscore_unet.pt"
    save_network(UNet(1, 7, base_width=2), path, meta={"image_norm": "zscore"})
    extractor = build_extractor("unet", path)
    assert extractor.norm == "zscore"
    images = torch.rand(3, 1, 8, 8) * 1000
    images[:, :, :2] = 0  # outside the brain
    scaled = input_scaler(extractor, images, (1000.0,))(images, slice(0, 1))
    assert torch.equal(scaled, torch.from_numpy(zscore_brain(images.numpy())))
    assert torch.all(scaled[:, :, :2] == 0) and abs(float(scaled[:, :, 2:].mean())) < 1e-5
    result = measure_quality(
        synthetic=sets["synthetic"], real=sets["real"], output=tmp_path / "q", unet=path, **FAST
    )
    assert math.isfinite(result["features"]["fd_unet"])
    save_network(UNet(1, 7, base_width=2), tmp_path / "tanh.pt", meta={"image_norm": "tanh"})
    with pytest.raises(InputError, match="image_norm='tanh'"):
        build_extractor("unet", tmp_path / "tanh.pt")
