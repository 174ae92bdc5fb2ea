"""SPADE training through the real ``train()`` on the real composed config, shrunk to 32x32 and tiny widths."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

from synthseg.data.datamodule import BraTSDataModule
from synthseg.errors import InputError
from synthseg.models.spade import SPADEModule, lr_factor, split_epochs
from synthseg.networks.spade import MultiscaleDiscriminator, SPADEGenerator
from synthseg.paths import config_dir
from synthseg.synth.generate_images import load_image_generator
from synthseg.train import train
from tests.helpers.presets import compose_spade as compose_cfg


@pytest.mark.parametrize(
    "niter, decay, expected",
    [
        (50, 0, [1.0] * 50),  # the paper: constant
        (2, 2, [1.0, 1.0, 1.0, 0.5]),  # official: lr - lr/decay at the end of each epoch after niter
        (1, 4, [1.0, 1.0, 0.75, 0.5, 0.25]),
    ],
)
def test_learning_rate_schedule_by_hand(niter, decay, expected):
    assert [lr_factor(e, niter, decay) for e in range(niter + decay)] == pytest.approx(expected)


def test_the_epoch_count_is_stored_once_in_trainer_max_epochs():
    assert split_epochs(5, 3) == (3, 2) and split_epochs(50, 50) == (50, 0) and split_epochs(-1, 4) == (4, 0)
    assert split_epochs(5, 3, 2) == (3, 2) and split_epochs(1, 0, 2) == (0, 2)  # explicit: kept
    assert split_epochs(5, 6) == (6, 0)  # shorter than niter: constant rates


def test_config_composes_with_the_paper_settings(tiny_dataset, tmp_path):
    cfg = compose_cfg(tiny_dataset, tmp_path, "model.generator.ngf=64", "model.generator.image_size=256")
    assert cfg.data.image_norm == "tanh" and cfg.data.one_hot is True
    assert cfg.model.optimizer_g.lr == pytest.approx(1e-4) and cfg.model.optimizer_d.lr == pytest.approx(4e-4)
    assert list(cfg.model.optimizer_g.betas) == [0.0, 0.9]
    assert split_epochs(cfg.trainer.max_epochs, cfg.model.niter, cfg.model.niter_decay) == (50, 0)


@pytest.mark.parametrize(
    "experiment, task, reduced, epochs",
    [("spade_full", "spade_full", False, 50), ("spade_reduced", "spade_reduced", True, 250)],
)
def test_paper_experiments_compose(tiny_dataset, tmp_path, experiment, task, reduced, epochs):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", f"data.root={tiny_dataset}"])
    assert cfg.task_name == task and cfg.data.reduced is reduced
    assert cfg.trainer.max_epochs == epochs
    assert split_epochs(epochs, cfg.model.niter, cfg.model.niter_decay) == (epochs, 0)
    assert cfg.model.generator.ngf == 64 and cfg.model.generator.image_size == 256
    assert cfg.data.batch_size == 1 and cfg.data.image_norm == "tanh" and cfg.data.one_hot is True


def _check_logs_and_checkpoint(metrics: dict, run: Path, dataset: Path) -> None:
    for key in (
        "train/loss_G",
        "train/loss_D",
        "train/G_GAN",
        "train/G_GAN_Feat",
        "train/D_real",
        "train/D_fake",
    ):
        assert torch.isfinite(torch.tensor(metrics[key])), key
    assert 0.0 < metrics["val/psnr"] and -1.0 <= metrics["val/ssim"] <= 1.0
    # Epoch 2 of niter 0 + niter_decay 2 trains at half the initial rates.
    assert metrics["train/lr_G"] == pytest.approx(0.5e-4)
    assert metrics["train/lr_D"] == pytest.approx(2e-4)

    last = run / "checkpoints" / "last.ckpt"
    torch.load(last, map_location="cpu", weights_only=True)  # loads with weights_only
    dm = BraTSDataModule(str(dataset), image_norm="tanh", one_hot=True)
    dm.setup("fit")
    generator, train_max = load_image_generator(last)
    assert train_max == dm.stats["train_max"] > 0
    assert generator.image_size == 32 and generator.label_nc == 7

    events = list((run / "tensorboard").rglob("events.out.tfevents*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert "val/label_generated_real" in acc.Tags()["images"]
    image = acc.Images("val/label_generated_real")[-1]
    # Three rows of (label | generated | real) tiles of 32 pixels with 2-pixel gaps.
    assert (image.height, image.width) == (3 * 34 - 2, 3 * 34 - 2)


def _state(path: Path) -> tuple[dict[str, torch.Tensor], list[dict]]:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return checkpoint["state_dict"], checkpoint["optimizer_states"]


@pytest.mark.slow
def test_train_logs_saves_a_safe_checkpoint_and_resumes_exactly(tiny_dataset, tmp_path):
    # niter 0, niter_decay 2: epoch 1 at the full rates, epoch 2 at half, so the resumed epoch must also get
    # the schedule right.
    common = ("model.niter=0", "model.niter_decay=2", "callbacks.model_checkpoint.save_top_k=-1")
    metrics = train(compose_cfg(tiny_dataset, tmp_path / "straight", "trainer.max_epochs=2", *common))
    _check_logs_and_checkpoint(metrics, tmp_path / "straight", tiny_dataset)

    train(compose_cfg(tiny_dataset, tmp_path / "first", "trainer.max_epochs=1", *common))
    first_last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    train(
        compose_cfg(
            tiny_dataset, tmp_path / "resumed", "trainer.max_epochs=2", f"ckpt_path={first_last}", *common
        )
    )
    straight, straight_opt = _state(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    resumed, resumed_opt = _state(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    first, _ = _state(first_last)
    # The resumed run trained only the second epoch, and that epoch changed the weights.
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").glob("epoch_*")) == [
        "epoch_001.ckpt"
    ]
    assert not torch.equal(first["generator.conv_img.weight"], straight["generator.conv_img.weight"])
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    for opt_a, opt_b in zip(straight_opt, resumed_opt, strict=True):
        assert opt_a["param_groups"][0]["lr"] == opt_b["param_groups"][0]["lr"]
        for index, state in opt_a["state"].items():
            assert torch.equal(state["exp_avg"], opt_b["state"][index]["exp_avg"])


def _partial_adam(lr: float):
    return lambda params: torch.optim.Adam(params, lr=lr, betas=(0.0, 0.9))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"discriminator": MultiscaleDiscriminator(label_nc=4, ndf=2, n_layers=2)}, "channels"),
        ({"niter": -1}, "niter"),
    ],
)
def test_inconsistent_module_arguments_raise(kwargs, match):
    args = {
        "generator": SPADEGenerator(ngf=2, image_size=32, hidden_channels=4),
        "discriminator": MultiscaleDiscriminator(ndf=2, n_layers=2),
        "optimizer_g": _partial_adam(1e-4),
        "optimizer_d": _partial_adam(4e-4),
    }
    args.update(kwargs)
    with pytest.raises(InputError, match=match):
        SPADEModule(**args)


def test_one_training_step_uses_one_discriminator_batch_and_moves_both_networks():
    torch.manual_seed(0)
    module = SPADEModule(
        SPADEGenerator(ngf=2, image_size=32, hidden_channels=4),
        MultiscaleDiscriminator(ndf=2, n_layers=2),
        _partial_adam(1e-4),
        _partial_adam(4e-4),
    )
    label = torch.nn.functional.one_hot(torch.randint(0, 7, (2, 32, 32)), 7).permute(0, 3, 1, 2).float()
    real = torch.rand(2, 1, 32, 32) * 2 - 1
    module.discriminator.eval()  # spectral norm's power iteration would move between the two calls
    seen = []
    module.discriminator.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].shape[0]))
    pred_fake, pred_real = module.discriminate(label, module.generator(label), real)
    assert seen == [4]  # fake and real together
    assert pred_fake[0][-1].shape == pred_real[0][-1].shape
    # The real half of the joint batch equals the discriminator on the real pair alone (instance norm is
    # per sample).
    alone = module.discriminator(torch.cat([label, real], dim=1))
    torch.testing.assert_close(pred_real[1][-1], alone[1][-1])


def test_vae_variant_trains_one_batch(tiny_dataset, tmp_path):
    cfg = compose_cfg(
        tiny_dataset,
        tmp_path,
        "++trainer.fast_dev_run=1",
        "model.generator.use_vae=true",
        "model.generator.z_dim=8",
        "model.encoder={_target_: synthseg.networks.spade.ConvEncoder, input_nc: 1, ndf: 2, z_dim: 8, image_size: 32}",
    )
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/G_KLD"]))
    assert metrics["train/G_KLD"] >= 0


class CrashAtBatch(pl.Callback):
    """Stops a run with an exception when training reaches a batch (a crash after a checkpoint)."""

    def __init__(self, batch_idx: int) -> None:
        self.batch_idx = batch_idx

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.batch_idx:
            raise RuntimeError("simulated crash")


@pytest.mark.slow
def test_resume_from_the_middle_of_an_epoch_continues_exactly(tiny_dataset, tmp_path):
    common = (
        "++trainer.limit_train_batches=4",
        "trainer.max_epochs=1",
        "model.niter=1",
        "model.niter_decay=0",
    )
    train(compose_cfg(tiny_dataset, tmp_path / "straight", *common))
    # Manual optimisation counts two optimizer steps per iteration: global step 4 = after 2 of 4 batches.
    crashing = compose_cfg(
        tiny_dataset,
        tmp_path / "first",
        *common,
        "++callbacks.model_checkpoint.every_n_train_steps=4",
        f"+callbacks.crash._target_={__name__}.CrashAtBatch",
        "+callbacks.crash.batch_idx=3",
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crashing)
    first_last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    first_ckpt = torch.load(first_last, map_location="cpu", weights_only=True)
    assert first_ckpt["global_step"] == 4
    train(compose_cfg(tiny_dataset, tmp_path / "resumed", *common, f"ckpt_path={first_last}"))
    straight, _ = _state(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    resumed, _ = _state(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert not torch.equal(
        first_ckpt["state_dict"]["generator.conv_img.weight"], straight["generator.conv_img.weight"]
    )
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


@pytest.mark.parametrize(("weight", "term"), [("lambda_l1", "L1"), ("lambda_class", "Class")])
def test_a_reconstruction_term_trains_and_is_logged(tiny_dataset, tmp_path, weight, term):
    # model.lambda_l1 and model.lambda_class (beyond the paper) reach the generator's loss through the real
    # train(); off by default
    assert compose_cfg(tiny_dataset, tmp_path).model[weight] == 0.0
    metrics = train(compose_cfg(tiny_dataset, tmp_path, "++trainer.fast_dev_run=1", f"model.{weight}=100"))
    value, total = metrics[f"train/G_{term}"], metrics["train/loss_G"]
    assert 0 < value and total == pytest.approx(
        value + metrics["train/G_GAN"] + metrics["train/G_GAN_Feat"], rel=1e-5
    )


def test_adversarial_weight_reaches_the_generator_loss(tiny_dataset, tmp_path):
    # model.lambda_gan (beyond the paper) scales the logged hinge term through the real train(); 1 by default
    assert compose_cfg(tiny_dataset, tmp_path).model.lambda_gan == 1.0
    metrics = train(
        compose_cfg(
            tiny_dataset, tmp_path, "++trainer.fast_dev_run=1", "model.lambda_gan=0", "model.lambda_l1=10"
        )
    )
    assert metrics["train/G_GAN"] == 0.0
    assert metrics["train/loss_G"] == pytest.approx(
        metrics["train/G_L1"] + metrics["train/G_GAN_Feat"], rel=1e-5
    )
