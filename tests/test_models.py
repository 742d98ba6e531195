"""Generator / discriminator shapes and widths per stage, depth from image size, He init."""
import math

import pytest
import torch
from torch import nn

from trainable.config import from_dict
from trainable.models import Discriminator, Generator, build_models, init_weights

torch.set_num_threads(1)


def conv_out_channels(stages):
    """The output width of the (transposed) conv in each stage."""
    widths = []
    for stage in stages:
        convs = [m for m in stage.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        widths.append(convs[0].out_channels)
    return widths


def test_paper_widths_at_32():
    generator, discriminator = Generator(32, 1.0), Discriminator(32, 1.0)
    assert conv_out_channels(generator.encoder) == [64, 128, 256, 512, 512]
    assert conv_out_channels(generator.decoder) == [512, 256, 128, 64]
    assert generator.head[0].in_channels == 128 and generator.head[0].kernel_size == (1, 1)
    assert conv_out_channels(discriminator.layers) == [64, 128, 256, 512]
    strides = [m.stride[0] for m in discriminator.modules() if isinstance(m, nn.Conv2d)]
    assert strides == [2, 2, 2, 1, 1]


def test_encoder_spatial_sizes_at_32():
    generator = Generator(32, 0.25).eval()
    x, sizes = torch.zeros(1, 1, 32, 32), []
    for stage in generator.encoder:
        x = stage(x)
        sizes.append(x.shape[-1])
    assert sizes == [32, 16, 8, 4, 2]


@pytest.mark.parametrize("size, width", [(32, 1.0), (32, 0.25), (64, 0.25)])
def test_shapes(size, width):
    generator, discriminator = Generator(size, width), Discriminator(size, width)
    lightness = torch.rand(2, 1, size, size) * 2 - 1
    ab = generator(lightness)
    assert ab.shape == (2, 2, size, size)
    assert ab.abs().max().item() <= 1.0
    logits = discriminator(torch.cat([lightness, ab], dim=1))
    assert logits.shape == (2, 1, 4, 4)


def test_depth_grows_with_image_size():
    generator, discriminator = Generator(64, 0.25), Discriminator(64, 0.25)
    assert len(generator.encoder) == 6 and len(generator.decoder) == 5
    assert conv_out_channels(generator.encoder) == [16, 32, 64, 128, 128, 128]
    assert conv_out_channels(discriminator.layers) == [16, 32, 64, 128, 128]


def test_width_multiplier_and_minimum_of_one():
    assert conv_out_channels(Generator(32, 0.25).encoder) == [16, 32, 64, 128, 128]
    assert conv_out_channels(Generator(32, 0.001).encoder) == [1, 1, 1, 1, 1]


def test_bad_image_size():
    with pytest.raises(ValueError, match="power of two"):
        Generator(48)


def test_discriminator_first_layer_has_no_batch_norm():
    layers = Discriminator(32, 0.25).layers
    assert not any(isinstance(m, nn.BatchNorm2d) for m in layers[0].modules())
    assert all(any(isinstance(m, nn.BatchNorm2d) for m in layer.modules()) for layer in layers[1:])


def test_he_init_std():
    generator = init_weights(Generator(32, 0.5))
    conv = generator.encoder[2][0]  # 4×4, 32 → 64 channels, followed by LeakyReLU(0.2)
    fan_in = conv.in_channels * 16
    expected = math.sqrt(2 / (1 + 0.2**2)) / math.sqrt(fan_in)
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.1)
    deconv = generator.decoder[1][0]  # followed by ReLU; torch's fan_in is weight.size(1)·k·k
    expected = math.sqrt(2) / math.sqrt(deconv.weight.size(1) * 16)
    assert deconv.weight.std().item() == pytest.approx(expected, rel=0.1)
    batch_norm = generator.encoder[1][1]
    assert torch.equal(batch_norm.weight, torch.ones_like(batch_norm.weight))
    assert torch.equal(batch_norm.bias, torch.zeros_like(batch_norm.bias))


def test_build_models_from_config():
    cfg = from_dict({"data": {"image_size": 64}, "model": {"width": 0.25}})
    generator, discriminator = build_models(cfg)
    assert conv_out_channels(generator.encoder)[0] == 16
    assert len(generator.encoder) == 6
    assert discriminator(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 4, 4)


def test_resize_upsampling_has_no_transposed_conv_and_keeps_shapes():
    from trainable.config import load_config
    cfg = load_config(None, ["model.upsample=resize", "model.width=0.125"])
    generator, _ = build_models(cfg)
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in generator.modules())
    assert sum(isinstance(m, torch.nn.Upsample) for m in generator.modules()) == len(generator.decoder)
    out = generator(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 2, 32, 32)
