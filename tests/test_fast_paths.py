"""Fast paths of the models: numerics that stay in float32 under mixed precision (the gradient penalty under
fp16 loss scaling, pixel norm, minibatch stddev, spectral norm), channels_last, torch.compile, fused Adam,
short runs through the real ``train()`` with ``bf16-mixed`` and with fp16 + GradScaler (on CPU here), and the
fallbacks where the machine cannot: bf16 and torch.compile asked for fall back to fp32 / eager, saying so once.
(``auto``, the choice by measurement: test_autotune.py.)"""

from __future__ import annotations

import csv
import math
import pickle
from functools import partial
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict
from torch import nn

from synthseg.checkpoint import safe_load
from synthseg.errors import InputError
from synthseg.losses.wgan import WGANGPLoss
from synthseg.models.pgan import PGAN
from synthseg.models.spade import SPADEModule
from synthseg.networks.pgan import PGANDiscriminator, PGANGenerator
from synthseg.networks.pgan_layers import MinibatchStdDev, pixel_norm
from synthseg.networks.spade import MultiscaleDiscriminator, SPADEGenerator
from synthseg.networks.spade_layers import Float32SpectralNorm, spectral_norm_float32
from synthseg.train import train
from synthseg.utils import fastpath
from synthseg.utils.fastpath import autocast_dtype
from tests.conftest import compose_train, write_dataset
from tests.helpers.presets import PGAN_TINY, SPADE_TINY

pytestmark = pytest.mark.usefixtures("single_thread")


# ------------------------------------------------------------------------------- float32 islands (PGAN)
def test_pixel_norm_of_large_fp16_features_is_unit_mean_square():
    x = torch.full((2, 4, 3, 3), 300.0, dtype=torch.float16)  # 300^2 overflows fp16 (max 65504)
    assert torch.isinf(x.square()).all()
    y = pixel_norm(x)
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.float().square().mean(dim=1), torch.ones(2, 3, 3), rtol=1e-3, atol=1e-3)


def test_minibatch_stddev_of_identical_fp16_samples_has_finite_gradients():
    x = torch.ones(4, 3, 2, 2, dtype=torch.float16, requires_grad=True)  # zero variance: sqrt(0 + eps)
    out = MinibatchStdDev(group_size=4)(x)
    assert out.dtype == torch.float16
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# --------------------------------------------------------------------------- gradient penalty and scaling
def _tiny_gradient_critic() -> nn.Module:
    """A critic whose input gradient (2e-8 per pixel) is below fp16's smallest subnormal (6e-8)."""
    critic = nn.Sequential(nn.Flatten(), nn.Linear(16, 2, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        critic[1].weight.fill_(1e-4)
        critic[2].weight.fill_(1e-4)
    return critic


def _penalty_terms(
    critic: nn.Module, grad_scale: float, dtype: torch.dtype | None
) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    reals, fakes = torch.randn(3, 1, 4, 4, generator=gen), torch.randn(3, 1, 4, 4, generator=gen)
    mixing = torch.rand(3, 1, 1, 1, generator=gen)
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        return WGANGPLoss().discriminator(critic, reals, fakes, mixing, grad_scale=grad_scale)


def test_gradient_penalty_under_fp16_needs_the_loss_scale():
    critic = _tiny_gradient_critic()
    exact = _penalty_terms(critic, 1.0, None)["grad_norm"]
    assert exact == pytest.approx(2e-8 * 4, rel=1e-5)  # 16 pixels of 2e-8: norm 8e-8
    unscaled = _penalty_terms(critic, 1.0, torch.float16)["grad_norm"]
    assert unscaled == 0.0  # flushed to zero: the penalty would see a zero gradient
    scaled = _penalty_terms(critic, 2.0**16, torch.float16)
    assert scaled["grad_norm"].dtype == torch.float32
    assert scaled["grad_norm"] == pytest.approx(float(exact), rel=1e-2)


def test_gradient_penalty_is_unchanged_by_the_scale_in_float32():
    critic = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(64, 1))
    plain = _penalty_terms(critic, 1.0, None)
    scaled = _penalty_terms(critic, 1024.0, None)
    for key in ("loss", "gradient_penalty", "grad_norm"):
        torch.testing.assert_close(scaled[key], plain[key])
    grads = []
    for terms in (_penalty_terms(critic, 1.0, None), _penalty_terms(critic, 1024.0, None)):
        critic.zero_grad()
        terms["loss"].backward()
        grads.append([p.grad.clone() for p in critic.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_gradient_penalty_rejects_a_non_positive_scale():
    with pytest.raises(ValueError, match="grad_scale"):
        _penalty_terms(_tiny_gradient_critic(), 0.0, None)


# ----------------------------------------------------------------------------------- spectral norm
def test_spectral_norm_power_iteration_runs_in_float32_under_autocast(monkeypatch: pytest.MonkeyPatch):
    conv = spectral_norm_float32(nn.Conv2d(3, 5, 3))
    assert {"weight_orig", "weight_u", "weight_v"} <= set(conv.state_dict())  # torch's keys
    autocast_seen = []
    real_mv = torch.mv

    def recording_mv(*args, **kwargs):
        autocast_seen.append(torch.is_autocast_enabled("cpu"))
        return real_mv(*args, **kwargs)

    monkeypatch.setattr(torch, "mv", recording_mv)
    x = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv(x)
    assert autocast_seen and not any(autocast_seen)
    # Outside autocast it is torch's spectral norm, step for step.
    reference = nn.utils.spectral_norm(nn.Conv2d(3, 5, 3))
    reference.load_state_dict(conv.state_dict())
    conv(x), reference(x)
    torch.testing.assert_close(conv.weight, reference.weight, rtol=0, atol=0)
    torch.testing.assert_close(conv.weight_u, reference.weight_u, rtol=0, atol=0)


def test_spectral_norm_hook_survives_pickling_for_spawned_ddp_workers():
    conv = spectral_norm_float32(nn.Conv2d(2, 2, 3))
    clone = pickle.loads(pickle.dumps(conv))
    assert any(isinstance(h, Float32SpectralNorm) for h in clone._forward_pre_hooks.values())


# ------------------------------------------------------------------------------------ autocast settings
def test_autocast_setting_names_a_dtype_or_fails_clearly():
    assert autocast_dtype(None) is None
    assert autocast_dtype("bf16") is torch.bfloat16 and autocast_dtype("fp16") is torch.float16
    with pytest.raises(InputError, match="autocast must be null, bf16 or fp16, got 'fp8'"):
        autocast_dtype("fp8")


# ---------------------------------------------------------------------------------------- channels_last
def _adam(lr: float):
    return partial(torch.optim.Adam, lr=lr)


def test_pgan_channels_last_keeps_weights_nhwc_and_values_equal():
    torch.manual_seed(0)
    gen = PGANGenerator(resolution=8, latent_dim=8, fmap_base=32, fmap_max=8)
    disc = PGANDiscriminator(resolution=8, fmap_base=32, fmap_max=8)
    plain = PGAN(
        PGANGenerator(**gen.init_args), PGANDiscriminator(**disc.init_args), _adam(1e-3), _adam(1e-3)
    )
    plain.load_state_dict(PGAN(gen, disc, _adam(1e-3), _adam(1e-3)).state_dict())
    fast = PGAN(gen, disc, _adam(1e-3), _adam(1e-3), channels_last=True)
    conv = fast.generator.blocks.b8.conv0.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    z = torch.randn(4, 8)
    torch.testing.assert_close(fast.generator(z, 8, 0.5), plain.generator(z, 8, 0.5), rtol=1e-4, atol=1e-5)
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(fast.discriminator(x, 0.5), plain.discriminator(x, 0.5), rtol=1e-4, atol=1e-5)


def test_spade_channels_last_and_compile_switches_keep_the_networks_and_their_keys():
    def module(**fast: bool) -> SPADEModule:
        torch.manual_seed(0)
        return SPADEModule(
            SPADEGenerator(ngf=2, image_size=32, hidden_channels=4),
            MultiscaleDiscriminator(ndf=2, n_layers=2),
            _adam(1e-4),
            _adam(4e-4),
            **fast,
        )

    plain, fast = module(), module(channels_last=True, compile=True)
    assert set(fast.state_dict()) == set(plain.state_dict())  # compiled wrappers add no keys
    assert isinstance(fast.run_generator, torch._dynamo.eval_frame.OptimizedModule)
    assert fast.run_generator._orig_mod is fast.generator and plain.run_generator is plain.generator
    assert fast.generator.fc.weight.is_contiguous(memory_format=torch.channels_last)
    batch = {
        "label": torch.randint(0, 7, (2, 32, 32)),
        "image": torch.rand(2, 1, 32, 32) * 2 - 1,
    }
    label, image = fast._inputs(batch)
    assert label.is_contiguous(memory_format=torch.channels_last) and label.shape == (2, 7, 32, 32)
    plain.eval(), fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            fast.generator(label), plain.generator(plain._inputs(batch)[0]), rtol=1e-4, atol=1e-5
        )


# ----------------------------------------------------------------------- short runs through train()
@pytest.fixture(scope="module")
def gan_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("amp") / "prepared", num_slices=40, size=16)


def _swd_rows(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(run / "swd.csv")))


def test_pgan_trains_in_bf16_mixed_precision_with_channels_last(gan_data: Path, tmp_path: Path):
    cfg = compose_train(
        [
            *PGAN_TINY,
            f"data.root={gan_data}",
            "model.total_kimg=0.048",
            "trainer.precision=bf16-mixed",
            "model.channels_last=true",
        ],
        tmp_path,
    )
    train(cfg)
    rows = _swd_rows(tmp_path / "run")
    assert [int(r["resolution"]) for r in rows] == [4, 8, 8]
    assert all(math.isfinite(float(r["swd_avg"])) for r in rows)
    checkpoint = safe_load(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert checkpoint["pgan"]["images_seen"] == 48
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())


def test_pgan_fp16_gradient_penalty_uses_the_grad_scalers_scale(
    gan_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    scales: list[float] = []
    original = WGANGPLoss.discriminator

    def recording(self, critic, reals, fakes, mixing, grad_scale=1.0):
        scales.append(grad_scale)
        return original(self, critic, reals, fakes, mixing, grad_scale=grad_scale)

    monkeypatch.setattr(WGANGPLoss, "discriminator", recording)
    cfg = compose_train(
        [*PGAN_TINY, f"data.root={gan_data}", "model.total_kimg=0.032", "model.swd_images=0"], tmp_path
    )
    with open_dict(cfg):
        # Lightning turns precision=16-mixed into bf16 on CPU; the plugin itself keeps fp16 + GradScaler.
        cfg.trainer.precision = None
        cfg.trainer.plugins.append(
            {
                "_target_": "pytorch_lightning.plugins.precision.MixedPrecision",
                "precision": "16-mixed",
                "device": "cpu",
            }
        )
    train(cfg)
    assert len(scales) == 4  # 16 images at 4x4 and 16 fading in 8x8, batches of 8
    # The live scale of the GradScaler: 2^16 at first, halved at every overflow (it grows only after
    # 2,000 steps without one).
    assert scales[0] == 2.0**16
    assert all(math.log2(s).is_integer() for s in scales)
    assert scales == sorted(scales, reverse=True)
    checkpoint = safe_load(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())


def test_spade_trains_in_bf16_mixed_precision(tiny_dataset: Path, tmp_path: Path):
    cfg = compose_train(
        [
            *SPADE_TINY,
            f"data.root={tiny_dataset}",
            "trainer.max_epochs=1",
            "model.niter=1",
            "trainer.precision=bf16-mixed",
            "model.channels_last=true",
        ],
        tmp_path,
    )
    metrics = train(cfg)
    assert math.isfinite(metrics["train/loss_G_epoch"]) and math.isfinite(metrics["train/loss_D_epoch"])
    checkpoint = safe_load(next((tmp_path / "run" / "checkpoints").glob("*.ckpt")))
    weights = checkpoint["state_dict"]
    spectral = [k for k in weights if k.startswith("generator.") and k.endswith("weight_orig")]
    assert spectral and all(weights[k].dtype == torch.float32 for k in spectral)  # parameters stay float32
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


@pytest.mark.slow
def test_fused_adam_switch_reaches_every_optimizer_and_trains(gan_data: Path, tmp_path: Path):
    from hydra.utils import instantiate

    for model, keys in (
        ("unet", ["optimizer"]),
        ("spade", ["optimizer_g", "optimizer_d"]),
        ("pgan", ["optimizer_g", "optimizer_d"]),
    ):
        overrides = [f"model={model}", f"data.root={gan_data}"]
        overrides += [f"model.{key}.fused=true" for key in keys]
        cfg = compose_train(overrides, tmp_path / model)
        for key in keys:
            optimizer = instantiate(cfg.model[key])(params=[nn.Parameter(torch.zeros(2))])
            assert optimizer.defaults["fused"] is True
    cfg = compose_train(
        [
            *PGAN_TINY,
            f"data.root={gan_data}",
            "model.total_kimg=0.032",
            "model.swd_images=0",
            "model.optimizer_g.fused=true",
            "model.optimizer_d.fused=true",
        ],
        tmp_path / "run_fused",
    )
    train(cfg)
    checkpoint = safe_load(tmp_path / "run_fused" / "run" / "checkpoints" / "last.ckpt")
    assert checkpoint["pgan"]["images_seen"] == 32
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())


# -------------------------------------------------- fallbacks: bf16 and compile where they cannot run
FAST = ["model=unet", "trainer.precision=bf16-mixed", "model.compile=true"]


@pytest.mark.parametrize("bf16", [True, False])
@pytest.mark.parametrize("compiles", [True, False])
def test_fallbacks_follow_detection(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    bf16: bool,
    compiles: bool,
) -> None:
    monkeypatch.setattr(fastpath, "bf16_native", lambda cuda: bf16)
    monkeypatch.setattr(fastpath, "compile_works", lambda cuda: compiles)
    monkeypatch.setattr(fastpath, "_SAID", set())
    cfg = compose_train(FAST, tmp_path)
    trainer, model, said = fastpath.apply_fallbacks(cfg.trainer, cfg.model)
    assert trainer["precision"] == ("bf16-mixed" if bf16 else "32-true")
    assert model is not None and model["compile"] is compiles
    assert (cfg.trainer.precision, cfg.model.compile) == (
        "bf16-mixed",
        True,
    )  # the config given stays as it is
    assert len(said) == (not bf16) + (not compiles)
    assert capsys.readouterr().out.splitlines() == said
    again = compose_train(FAST, tmp_path)
    assert fastpath.apply_fallbacks(again.trainer, again.model).said == said  # a second run of a sweep: same,
    assert capsys.readouterr().out == ""  # not said again


def test_fp32_eager_configs_are_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probes: list[str] = []
    monkeypatch.setattr(fastpath, "bf16_native", lambda cuda: probes.append("bf16") or False)
    monkeypatch.setattr(fastpath, "compile_works", lambda cuda: probes.append("compile") or False)
    cfg = compose_train(["model=unet"], tmp_path)
    trainer, model, said = fastpath.apply_fallbacks(cfg.trainer, cfg.model)
    assert said == [] and probes == []  # no probe (nor its compile time) when not asked
    assert trainer["precision"] == "32-true" and model is not None and model["compile"] is False


def test_bf16_detection_reads_the_cpu_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert fastpath.bf16_native(cuda=False) is False
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert fastpath.bf16_native(cuda=False) is True


def test_compile_probe_failure_means_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fn):  # what a laptop without a C++ compiler gives: a backend error at the first call
        def call(*args):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

        return call

    fastpath.compile_works.cache_clear()
    monkeypatch.setattr(torch, "compile", broken)
    try:
        assert fastpath.compile_works(False) is False
    finally:
        fastpath.compile_works.cache_clear()
