"""Issue 16, model and synthesis side: networks, generation and export with several MR sequences."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from synthseg.checkpoint import save_network
from synthseg.data.manifest import read_manifest, read_stats
from synthseg.data.pngio import read_png
from synthseg.errors import InputError
from synthseg.models.spade import CHECKPOINT_KEY
from synthseg.networks.spade import MultiscaleDiscriminator, SPADEGenerator
from synthseg.networks.unet import UNet
from synthseg.synth import export, generate_images
from synthseg.synth.export import ExportSettings, select_cases, subject_folds
from synthseg.synth.generate_images import (
    GenerateImagesSettings,
    load_generator,
    load_image_generator,
    tanh_to_uint16,
)
from tests.conftest import compose_train, write_dataset

FOUR = ("t1", "t1c", "t2", "flair")


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------ networks
# Only two layers depend on the number of sequences S: the generator's last 3x3 conv (64 -> S, with bias) and
# the first 4x4 conv of each of the 2 discriminators ((7 + S) -> 64, with bias, no spectral norm).
@pytest.mark.parametrize("outputs", [1, 2, 4])
def test_parameter_counts_grow_only_in_the_last_and_first_convs(outputs):
    generator = count(SPADEGenerator(label_nc=7, output_nc=outputs, ngf=64, image_size=256))
    discriminator = count(MultiscaleDiscriminator(label_nc=7, output_nc=outputs, num_D=2, ndf=64, n_layers=4))
    assert generator == 92_178_241 + (outputs - 1) * (64 * 9 + 1)
    assert discriminator == 5_537_922 + 2 * (outputs - 1) * (64 * 16)
    if outputs == 4:  # the official networks with their output conv at 4 channels, D input at 7 + 4
        assert (generator, discriminator) == (92_179_972, 5_544_066)


@pytest.mark.parametrize("outputs", [1, 2, 4])
def test_shapes_with_several_sequences(outputs):
    generator = SPADEGenerator(label_nc=7, output_nc=outputs, ngf=2, image_size=32, hidden_channels=4)
    label = torch.nn.functional.one_hot(torch.randint(0, 7, (2, 32, 32)), 7).permute(0, 3, 1, 2).float()
    fake = generator(label)
    assert fake.shape == (2, outputs, 32, 32)
    discriminator = MultiscaleDiscriminator(label_nc=7, output_nc=outputs, ndf=4)
    features = discriminator(torch.cat([label, fake], 1))
    assert len(features) == 2 and features[0][-1].shape[:2] == (2, 1)
    unet = UNet(in_channels=outputs, num_classes=7, base_width=2)
    assert unet(torch.zeros(2, outputs, 32, 32)).shape == (2, 7, 32, 32)


# ----------------------------------------------------------------------------- channels from sequences
@pytest.mark.parametrize("model", ["unet", "pgan", "spade"])
@pytest.mark.parametrize("sequences", [None, "[t2]", "[t1,t1c]", "[t1,t1c,t2,flair]"])
def test_model_configs_instantiate_alone_for_every_sequence_choice(model, sequences):
    """The Hydra idiom without train(): the channel counts are interpolations of data.sequences."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from synthseg.paths import config_dir

    overrides = [f"model={model}", *([f"data.sequences={sequences}"] if sequences else [])]
    shrink = {
        "unet": ["model.net.base_width=2"],
        "pgan": ["debug=tiny_pgan"],
        "spade": ["debug=tiny_spade"],
    }[model]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, *shrink])
    GlobalHydra.instance().clear()
    module = instantiate(cfg.model)
    count = len(sequences.split(",")) if sequences else 1  # the default: T1c alone
    if model == "unet":
        assert module.net.init_args["in_channels"] == count
        assert module.net.eval()(torch.zeros(1, count, 16, 16)).shape == (1, 7, 16, 16)
    elif model == "spade":
        assert module.generator.init_args["output_nc"] == module.discriminator.init_args["output_nc"] == count
    else:  # PGAN makes label maps: one channel whatever the sequences
        assert module.generator.channels == 1


def test_an_explicit_channel_count_that_disagrees_is_one_line(tmp_path):
    from synthseg.train import TrainSettings

    cfg = compose_train(["model=spade", "data.sequences=[t1,t1c]", "model.generator.output_nc=1"], tmp_path)
    with pytest.raises(InputError, match=r"model\.generator\.output_nc=1 .*data\.sequences") as err:
        TrainSettings.from_config(cfg)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()
    agreeing = compose_train(
        ["model=spade", "data.sequences=[t1,t1c]", "model.generator.output_nc=2"], tmp_path
    )
    assert TrainSettings.from_config(agreeing).model["generator"]["output_nc"] == 2


# ------------------------------------------------------------------------------------ generate-images
TRAIN_MAX = (900.0, 1500.0, 3000.0, 700.0)


def four_sequence_generator() -> SPADEGenerator:
    torch.manual_seed(0)
    return SPADEGenerator(label_nc=7, output_nc=4, ngf=2, image_size=32, hidden_channels=4).eval()


def test_generate_images_writes_every_sequence_with_its_own_maximum(tmp_path):
    masks = write_dataset(tmp_path / "masks", num_slices=6, size=32, source="synthetic")
    snapshot = tmp_path / "generator.pt"
    save_network(four_sequence_generator(), snapshot, meta={"train_max": list(TRAIN_MAX), "sequences": FOUR})
    out = tmp_path / "synthetic"
    generate_images.run(
        GenerateImagesSettings(
            checkpoint=snapshot, masks=masks, output=out, batch_size=4, device="cpu", progress=False
        )
    )

    manifest = read_manifest(out)
    assert manifest.sequences == FOUR and manifest.images.shape == (6, 4)
    stats = read_stats(out)
    assert stats["sequences"] == list(FOUR) and len(stats["train_max"]) == 4
    generator = four_sequence_generator()
    for i in range(len(manifest)):
        mask = read_png(out / manifest.label[i])
        one_hot = torch.nn.functional.one_hot(torch.from_numpy(mask.astype(np.int64)), 7).permute(2, 0, 1)
        with torch.no_grad():
            fake = generator(one_hot[None].float())[0]
        for c, seq in enumerate(FOUR):
            path = out / manifest.images[i, c]
            assert path == out / "images" / seq / f"{manifest.ids[i]}.png"
            image = read_png(path)
            assert image.dtype == np.uint16 and image.max() <= TRAIN_MAX[c]
            expected = tanh_to_uint16(fake[c], TRAIN_MAX[c])
            assert (
                np.abs(image.astype(np.int64) - expected.astype(np.int64)).max() <= 1
            )  # batch vs single call
    maxima = [max(int(read_png(out / p).max()) for p in manifest.images[:, c]) for c in range(4)]
    assert stats["train_max"] == maxima


def test_per_sequence_round_trip_through_the_dataset_normalisation_is_exact():
    from synthseg.data.dataset import SliceDataset

    # (S, 1, L): sequence c spans 0..train_max[c], through the DataModule's own per-sequence normalisation.
    values = np.stack([np.rint(np.linspace(0, top, 701)) for top in TRAIN_MAX]).astype(np.uint16)[:, None]
    dataset = SliceDataset(
        [], np.zeros((0, 2)), classes=7, image_norm="tanh", train_max=TRAIN_MAX, train_mean=[0.0] * 4
    )
    normalized = np.asarray(dataset.normalize(values.astype(np.float32)))
    assert normalized.dtype == np.float32 and normalized.min() == -1 and normalized.max() == 1
    for c, top in enumerate(TRAIN_MAX):
        assert np.array_equal(tanh_to_uint16(torch.from_numpy(normalized[c]), top), values[c])


def test_training_checkpoint_records_sequences_and_maxima_and_old_ones_still_load(tmp_path):
    generator = four_sequence_generator()
    weights = {f"generator.{k}": v for k, v in generator.state_dict().items()}
    new = tmp_path / "new.ckpt"
    entry = {
        "init_args": generator.init_args,
        "meta": {"train_max": list(TRAIN_MAX), "sequences": list(FOUR)},
    }
    torch.save(
        {"state_dict": weights, CHECKPOINT_KEY: {"generator": entry, "train_max": list(TRAIN_MAX)}}, new
    )
    loaded = load_generator(new)
    assert loaded.sequences == FOUR and loaded.train_max == TRAIN_MAX
    with pytest.raises(InputError, match="4 sequences"):
        load_image_generator(new)

    single = SPADEGenerator(label_nc=7, output_nc=1, ngf=2, image_size=32, hidden_channels=4)
    old = tmp_path / "old.ckpt"  # synthseg 0.1: one number, no sequences
    torch.save(
        {
            "state_dict": {f"generator.{k}": v for k, v in single.state_dict().items()},
            CHECKPOINT_KEY: {"generator": {"init_args": single.init_args}, "train_max": 1234.0},
        },
        old,
    )
    loaded = load_generator(old)
    assert loaded.sequences == ("t1c",) and loaded.train_max == (1234.0,)

    bad = tmp_path / "bad.pt"
    save_network(generator, bad, meta={"train_max": [1000.0, 1000.0], "sequences": ["t1", "t2"]})
    with pytest.raises(InputError, match="4 output channels") as err:
        load_generator(bad)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------- export
def _four_sequence_source(tmp_path: Path) -> Path:
    side = 16
    labels, images = [], []
    for i in range(12):
        label = np.zeros((side, side), np.uint8)
        label[0, :7] = np.arange(7)
        label[4 + i % 6, 4] = 3
        labels.append(label)
        images.append(np.stack([np.full((side, side), 1000 * (c + 1) + i, np.uint16) for c in range(4)]))
    return write_dataset(
        tmp_path / "prepared",
        labels=labels,
        images=images,
        ids=[f"Brats18_X_{i // 2}_1_{i % 2:03d}" for i in range(12)],
        cases=[f"Brats18_X_{i // 2}_1" for i in range(12)],
        slices=[i % 2 for i in range(12)],
        splits=["train"] * 10 + ["test"] * 2,
        sequences=FOUR,
    )


def test_export_writes_one_channel_per_sequence_in_nnunet_layout(tmp_path):
    source = _four_sequence_source(tmp_path)
    folder = export.run(
        ExportSettings(source=[source], output=tmp_path / "raw", classes=7, test=True, progress=False)
    )
    info = json.loads((folder / "dataset.json").read_text())
    assert info["channel_names"] == {"0": "T1", "1": "T1c", "2": "T2", "3": "FLAIR"}
    cases = sorted(p.stem for p in (folder / "labelsTr").iterdir())
    assert len(cases) == info["numTraining"] == 10
    # nnU-Net's rule: every case has exactly the channels _0000.._{n-1} of channel_names, nothing else.
    files = sorted(p.name for p in (folder / "imagesTr").iterdir())
    assert files == sorted(f"{c}_{k:04d}.png" for c in cases for k in range(4))
    for name in files:
        assert re.fullmatch(r".+_\d{4}\.png", name)
    manifest = read_manifest(source)
    row = list(manifest.ids).index(cases[0])
    for k in range(4):  # byte for byte, channel k = sequence k
        written = (folder / "imagesTr" / f"{cases[0]}_{k:04d}.png").read_bytes()
        assert written == (source / manifest.images[row, k]).read_bytes()
    assert len(list((folder / "imagesTs").iterdir())) == 2 * 4
    chosen = export.run(
        ExportSettings(
            source=[source], output=tmp_path / "raw2", sequences=["flair", "t1c"], folds=0, progress=False
        )
    )
    info = json.loads((chosen / "dataset.json").read_text())
    assert info["channel_names"] == {"0": "FLAIR", "1": "T1c"}
    written = (chosen / "imagesTr" / f"{cases[0]}_0000.png").read_bytes()
    assert written == (source / manifest.images[row, 3]).read_bytes()
    assert not (chosen / "splits_final.json").exists()


def test_export_refuses_a_sequence_a_source_lacks(tmp_path):
    t1c_only = write_dataset(tmp_path / "t1c", num_slices=10, size=16)
    with pytest.raises(InputError, match=r"t1c: holds sequences \['t1c'\], not \['flair'\]") as err:
        export.run(
            ExportSettings(source=[t1c_only], output=tmp_path / "raw", sequences=["flair"], progress=False)
        )
    assert "\n" not in str(err.value)


def test_splits_final_keeps_every_subject_in_one_fold(tmp_path):
    source = _four_sequence_source(tmp_path)
    synthetic = write_dataset(
        tmp_path / "synthetic", num_slices=4, size=16, source="synthetic", sequences=FOUR
    )
    folder = export.run(
        ExportSettings(source=[source, synthetic], output=tmp_path / "raw", classes=4, progress=False)
    )
    folds = json.loads((folder / "splits_final.json").read_text())
    cases = {row.split(",")[0]: row.split(",")[6] for row in (folder / "cases.csv").read_text().split()[1:]}
    assert len(folds) == 5
    assert sorted(c for fold in folds for c in fold["val"]) == sorted(cases)  # each case validated once
    for fold in folds:
        assert set(fold["train"]) | set(fold["val"]) == set(cases)
        train_subjects = {cases[c] for c in fold["train"]}
        assert not train_subjects & {cases[c] for c in fold["val"]}
    # Slices of one real subject share a group: Brats18_X_0_1 has two slices, in the same fold.
    same = [c for c in cases if c.startswith("s0_Brats18_X_0_1_")]
    assert len(same) == 2 and any(set(same) <= set(fold["val"]) for fold in folds)


def test_subject_folds_with_fewer_subjects_than_folds(tmp_path):
    source = _four_sequence_source(tmp_path)
    cases = select_cases([source], ["train"])
    assert len({c.subject for c in cases}) == 5
    assert len(subject_folds(cases, folds=3)) == 3
    assert len(subject_folds(cases, folds=8)) == 5  # one subject per fold
    assert subject_folds(cases[:2], folds=5) == []  # a single subject: nothing to split


def test_region_labels_follow_nnunet_brats_conversion(tmp_path):
    source = _four_sequence_source(tmp_path)
    folder = export.run(
        ExportSettings(source=[source], output=tmp_path / "raw", classes=4, regions=True, progress=False)
    )
    info = json.loads((folder / "dataset.json").read_text())
    assert info["labels"] == {
        "background": 0,
        "whole tumor": [1, 2, 3],
        "tumor core": [2, 3],
        "enhancing tumor": [3],
    }
    assert info["regions_class_order"] == [1, 2, 3]
    label = read_png(next((folder / "labelsTr").iterdir()))
    # 7-class row 0..6 = background, NCR/NET, edema, enhancing, WM, GM, CSF -> 0, 2, 1, 3, 0, 0, 0
    assert label[0, :7].tolist() == [0, 2, 1, 3, 0, 0, 0]
    with pytest.raises(InputError, match="regions=true needs classes=4"):
        export.run(
            ExportSettings(source=[source], output=tmp_path / "raw7", classes=7, regions=True, progress=False)
        )


# ---------------------------------------------------------------------------------- one training step
SPADE_TINY = [
    "model=spade",
    "debug=tiny_spade",
    "model.num_val_images=2",
    "data.batch_size=2",
    "data.eval_batch_size=2",
    "trainer.max_epochs=1",
    "++trainer.limit_train_batches=1",
    "++trainer.limit_val_batches=1",
    "logger=tensorboard",
]


def test_spade_trains_one_step_on_four_sequences_and_generates_them(tmp_path):
    from synthseg.data.datamodule import BraTSDataModule
    from synthseg.train import train

    data = write_dataset(tmp_path / "prepared", num_slices=20, size=32, sequences=FOUR)
    cfg = compose_train([*SPADE_TINY, f"data.root={data}", "data.sequences=[t1,t1c,t2,flair]"], tmp_path)
    metrics = train(cfg)  # output_nc: ${len:${data.sequences}} in the config
    for seq in FOUR:
        assert 0.0 < metrics[f"val/psnr_{seq}"] and -1.0 <= metrics[f"val/ssim_{seq}"] <= 1.0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["config"]["data"]["sequences"] == list(FOUR)
    assert results["config"]["model"]["generator"]["output_nc"] == 4
    assert results["config"]["model"]["discriminator"]["output_nc"] == 4
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    loaded = load_generator(last)
    dm = BraTSDataModule(str(data), image_norm="tanh", one_hot=True, sequences=list(FOUR))
    dm.setup("fit")
    assert loaded.sequences == FOUR and list(loaded.train_max) == dm.stats["train_max"]
    assert len(set(loaded.train_max)) > 1  # each sequence its own maximum

    out = tmp_path / "synthetic"
    generate_images.run(
        GenerateImagesSettings(checkpoint=last, masks=data, output=out, device="cpu", progress=False)
    )
    manifest = read_manifest(out)
    assert manifest.sequences == FOUR
    for c, seq in enumerate(FOUR):
        files = sorted((out / "images" / seq).iterdir())
        assert len(files) == len(manifest) == 20
        assert all(read_png(f).max() <= loaded.train_max[c] for f in files[:3])
    mixed = BraTSDataModule(
        str(data), synthetic={"root": str(out), "count": 5}, image_norm="tanh", sequences=list(FOUR)
    )
    mixed.setup("fit")
    assert mixed.stats["num_synthetic"] == 5
    assert next(iter(mixed.train_dataloader()))["image"].shape[1] == 4


def test_unet_trains_and_tests_one_step_on_four_sequences(tmp_path):
    from synthseg.train import train

    data = write_dataset(tmp_path / "prepared", num_slices=20, size=32, sequences=FOUR)
    cfg = compose_train(
        [
            "model=unet",
            f"data.root={data}",
            "data.sequences=[t1,t1c,t2,flair]",
            "model.net.base_width=2",
            "data.batch_size=4",
            "trainer.max_epochs=1",
            "++trainer.limit_train_batches=1",
            "++trainer.limit_val_batches=1",
            "test=true",
        ],
        tmp_path,
    )
    metrics = train(cfg)
    assert 0.0 <= metrics["test/dice_error"] <= 1.0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["config"]["model"]["net"]["in_channels"] == 4
    assert results["config"]["data"]["sequences"] == list(FOUR)


def test_a_network_built_for_other_sequences_is_one_line(tmp_path):
    from synthseg.train import train

    data = write_dataset(tmp_path / "prepared", num_slices=20, size=32, sequences=FOUR)
    cfg = compose_train(
        ["model=unet", f"data.root={data}", "data.sequences=[t1,t2]", "model.net.in_channels=4"], tmp_path
    )
    with pytest.raises(
        InputError, match=r"model\.net\.in_channels=4 .*data\.sequences=\['t1', 't2'\]"
    ) as err:
        train(cfg)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------- figures
def test_figures_show_every_sequence(tmp_path):
    from synthseg.report.figures import real_pairs_figure, spade_test_figure, synthetic_pairs_figure

    real = write_dataset(tmp_path / "prepared", num_slices=20, size=32, sequences=FOUR)
    t1c = write_dataset(tmp_path / "t1c", num_slices=20, size=32)
    # One pair per figure: four images above the label map versus one.
    four_high = real_pairs_figure(real, 1, 0).shape[0]
    one_high = real_pairs_figure(t1c, 1, 0).shape[0]
    assert (four_high, one_high) == (5 * 32, 2 * 32)

    snapshot = tmp_path / "generator.pt"
    save_network(four_sequence_generator(), snapshot, meta={"train_max": list(TRAIN_MAX), "sequences": FOUR})
    synthetic = tmp_path / "synthetic"
    generate_images.run(
        GenerateImagesSettings(
            checkpoint=snapshot, masks=real, output=synthetic, device="cpu", progress=False
        )
    )
    assert synthetic_pairs_figure(synthetic, 1, 0).shape[0] == 5 * 32

    test_masks = tmp_path / "test_masks"
    test_masks.mkdir()
    manifest = read_manifest(real)
    for row in manifest.rows("test"):
        (test_masks / f"{manifest.ids[row]}.png").write_bytes((real / manifest.label[row]).read_bytes())
    on_test = tmp_path / "spade_test"
    generate_images.run(
        GenerateImagesSettings(
            checkpoint=snapshot, masks=test_masks, output=on_test, device="cpu", keep_ids=True, progress=False
        )
    )
    figure = spade_test_figure([on_test], real, 1)
    # One tile: a column per sequence (generated above real), side by side.
    assert figure.shape[:2] == (2 * 32, 4 * 32)
    generated = read_png(on_test / "images" / "t2" / f"{manifest.ids[manifest.rows('test')[0]]}.png")
    assert generated.max() > 0


# ----------------------------------------------------------------------------------------------- report
def _run_with_sequences(folder: Path, data: Path, mix: str, seed: int, sequences: list[str] | None) -> None:
    from tests.conftest import make_run

    make_run(folder, mix=mix, classes=2, seed=seed, dice_error=0.2, data_root=data)
    results = json.loads((folder / "results.json").read_text())
    if sequences is not None:
        results["config"]["data"]["sequences"] = sequences
    (folder / "results.json").write_text(json.dumps(results))


def test_the_report_says_which_sequences_each_run_used(tmp_path):
    from synthseg.report.runs import find_runs, group_runs
    from synthseg.report.tables import table1_cells, table1_csv, table1_markdown

    data = write_dataset(tmp_path / "prepared", num_slices=20, size=16)
    _run_with_sequences(tmp_path / "runs" / "a", data, "full_real", 0, None)  # before 0.2.0: T1c
    _run_with_sequences(tmp_path / "runs" / "b", data, "full_syn23960", 0, list(FOUR))
    groups = group_runs(find_runs(tmp_path / "runs"))
    cells = table1_cells(groups)
    text = table1_markdown(groups, cells)
    assert "Input sequences per mix: full_real: t1c; full_syn23960: t1, t1c, t2, flair." in text
    rows = {row.split(",")[0]: row.split(",")[-1] for row in table1_csv(cells).split()[1:]}
    assert rows == {"full_real": "t1c", "full_syn23960": "t1+t1c+t2+flair"}

    _run_with_sequences(tmp_path / "runs" / "c", data, "full_real", 1, list(FOUR))
    with pytest.raises(InputError, match="full_real, 2 classes: runs with different data.sequences") as err:
        group_runs(find_runs(tmp_path / "runs"))
    assert "\n" not in str(err.value)


# -------------------------------------------------------------------------------------------------- demo
@pytest.mark.slow
@pytest.mark.parametrize("given, expected", [(None, ["t1c"]), ("[t1,t1c,t2,flair]", list(FOUR))])
def test_the_demo_passes_its_sequences_to_prepare_spade_and_the_sweep(tmp_path, monkeypatch, given, expected):
    from synthseg import demo as pipeline
    from synthseg.data.prepare import prepare

    overrides = [f"output={tmp_path / 'demo'}"] + ([f"sequences={given}"] if given else [])
    cfg = pipeline.DemoSettings.from_config(pipeline.compose_config("demo", overrides))
    seen: dict[str, list] = {}

    def fake_prepare(settings: Any) -> Path:
        seen["prepare"] = list(settings.sequences)
        return tmp_path / "prepared"

    monkeypatch.setattr(prepare, "run", fake_prepare)
    monkeypatch.setattr(prepare, "summarize", lambda record: "")
    monkeypatch.setattr(pipeline, "_train", lambda o, d: seen.setdefault(d.name, []).append(o))
    stages = {stage.output: stage for stage in pipeline.build_stages(cfg)}
    # The sweep reads the prepared manifest (the reduced row's step count); prepare itself is mocked.
    write_dataset(tmp_path / "prepared", num_slices=20, size=16, sequences=tuple(expected))
    for name, stage in stages.items():
        if name in ("prepared", "spade") or name.startswith("table1/"):
            stage.run(tmp_path)
    assert seen["prepare"] == expected
    wanted = f"data.sequences=[{','.join(expected)}]"
    assert wanted in seen["spade"][0]
    sweep_runs = [o for key, runs in seen.items() if key.endswith(tuple(f"classes{c}" for c in (7, 4, 2)))
                  for o in runs]  # fmt: skip
    assert sweep_runs and all(wanted in o for o in sweep_runs)


def test_segmentation_figure_feeds_a_four_sequence_unet_its_sequences(tmp_path):
    from synthseg.report.figures import segmentations_figure
    from synthseg.report.runs import load_run
    from tests.conftest import make_run

    data = write_dataset(tmp_path / "prepared", num_slices=20, size=16, sequences=FOUR)
    folder = make_run(tmp_path / "run", mix="full_real", classes=2, seed=0, dice_error=0.2, data_root=data)
    net = UNet(4, 2, base_width=2)
    torch.save(
        {"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}},
        folder / "checkpoints" / "best.ckpt",
    )
    results = json.loads((folder / "results.json").read_text())
    results["config"]["data"]["sequences"] = ["t2", "flair", "t1", "t1c"]  # another order than the dataset's
    results["config"]["model"]["net"]["in_channels"] = 4
    results["data_stats"].update(train_max=[1500.0, 1200.0, 1000.0, 900.0], train_mean=[0.1] * 4)
    (folder / "results.json").write_text(json.dumps(results))
    image, columns = segmentations_figure([load_run(folder / "results.json")], 2)
    assert columns == ["full_real"] and image.shape[:2] == (2 * 16 + 2, 3 * 16 + 4)
    # The first column shows the run's first sequence (t2), as the network saw it.
    manifest = read_manifest(data)
    row = manifest.rows("test")[~manifest.empty[manifest.rows("test")]][0]
    t2 = read_png(data / manifest.images[row, FOUR.index("t2")]).astype(np.float32)
    from synthseg.utils.visual import to_gray_rgb

    assert np.array_equal(image[:16, :16], to_gray_rgb(t2 / 1500.0 - 0.1))
