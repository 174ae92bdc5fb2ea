"""One image writer: modules prepare images in log_images(), the ImageLogger callback writes them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from synthseg.models.common import ImageLogger, write_images


class _Sink:
    def __init__(self) -> None:
        self.images: list[tuple[str, tuple[int, ...], int]] = []

    def add_image(self, tag, image, step, dataformats):
        assert dataformats == "HWC"
        self.images.append((tag, image.shape, step))


class _Module:
    def __init__(self) -> None:
        self.calls = 0

    def log_images(self):
        self.calls += 1
        return {"val/grid": np.zeros((4, 6, 3), np.uint8)}


def _trainer(sink, *, rank_zero=True, sanity=False):
    logger = SimpleNamespace(experiment=sink) if sink is not None else None
    return SimpleNamespace(logger=logger, is_global_zero=rank_zero, global_step=7, sanity_checking=sanity)


def test_images_go_to_the_logger_after_validation_only_on_rank_zero():
    sink, module = _Sink(), _Module()
    ImageLogger().on_validation_epoch_end(_trainer(sink), module)
    assert sink.images == [("val/grid", (4, 6, 3), 7)]
    ImageLogger().on_validation_epoch_end(_trainer(sink, sanity=True), module)
    write_images(_trainer(sink, rank_zero=False), module)
    assert len(sink.images) == 1 and module.calls == 1


def test_without_an_image_sink_the_module_is_not_asked():
    module = _Module()
    write_images(_trainer(None), module)
    write_images(_trainer(object()), module)  # a logger without add_image (CSV)
    assert module.calls == 0


def test_every_model_attaches_the_image_writer():
    from functools import partial

    import torch

    from synthseg.models.pgan import PGAN
    from synthseg.models.pgan_ticks import PGANTicks
    from synthseg.models.unet import UNetModule
    from synthseg.networks.pgan import PGANDiscriminator, PGANGenerator
    from synthseg.networks.unet import UNet

    adam = partial(torch.optim.Adam, lr=1e-3)
    pgan = PGAN(
        PGANGenerator(resolution=8, latent_dim=4, fmap_base=16, fmap_max=4),
        PGANDiscriminator(resolution=8, fmap_base=16, fmap_max=4),
        adam,
        adam,
    )
    assert any(isinstance(c, PGANTicks) for c in pgan.configure_callbacks())
    unet = UNetModule(UNet(num_classes=4, base_width=2), adam)
    assert any(isinstance(c, ImageLogger) for c in unet.configure_callbacks())
