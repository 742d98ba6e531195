"""FID/KID: the shipped Inception is the expected file; FID(x, x) ≈ 0 and grows with added noise."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainable.fid import WEIGHTS_SHA256, InceptionFeatures, features_of, fid_kid, sha256_of, weights_path


def test_weights_are_the_standard_inception():
    assert sha256_of(weights_path()) == WEIGHTS_SHA256


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")       # torchmetrics warns that KID keeps features
def test_fid_is_zero_on_itself_and_grows_with_noise():
    generator = torch.Generator().manual_seed(0)
    images = F.avg_pool2d(torch.rand(12, 3, 36, 36, generator=generator), 5, 1)     # smooth 32×32
    noise = torch.randn(images.shape, generator=generator)
    network = InceptionFeatures()
    clean = features_of(network, [images])
    slightly, heavily = (features_of(network, [(images + s * noise).clamp(0, 1)]) for s in (0.05, 0.3))
    same, small, large = fid_kid(clean, clean), fid_kid(slightly, clean), fid_kid(heavily, clean)
    assert abs(same["fid"]) < 1e-2
    assert 1.0 < small["fid"] < large["fid"]
    assert same["kid"] < small["kid"] < large["kid"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_evaluate_adds_fid_when_asked_or_due():
    from tests.helpers import tiny_config
    from trainable.engine import Trainer
    images = None
    for every, expected in ((0, False), (1, True)):
        trainer = Trainer(tiny_config(f"train.fid_every={every}"))
        images = trainer.data.val[:4] if images is None else images
        trainer.epoch = 1
        assert ("val_fid" in trainer.evaluate(images)) == expected
    assert {"val_fid", "val_kid"} <= set(Trainer(tiny_config()).evaluate(images, fid=True))


def test_one_image_has_no_fid_rather_than_an_error():
    from trainable.fid import colorization_realism
    assert colorization_realism(lambda batch: batch, torch.zeros(1, 3, 8, 8)) == {}
