"""bf16 and torch.compile asked for where the machine cannot run them fall back to fp32 / eager, saying so once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from synthseg.utils import fastpath
from tests.conftest import compose_train

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
