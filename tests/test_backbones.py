"""Tests of gmcli.models.backbones: shapes, feature dimensions, input checks, names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gmcli.errors import GmcliError
from gmcli.models.backbones import BACKBONES, build_backbone

NATIVE = [
    ("digits-cnn", (1, 8, 8), 32),
    ("convnet6", (1, 28, 28), 2),
    ("cnn28", (1, 28, 28), 64),
    ("resnet20", (3, 32, 32), 64),
    ("resnet20", (1, 32, 32), 64),
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("name, shape, default_dim", NATIVE)
def test_native_backbones_map_to_default_dim(name, shape, default_dim):
    backbone = build_backbone(name, input_shape=shape)

    out = backbone(torch.randn(5, *shape))

    assert backbone.out_dim == default_dim
    assert out.shape == (5, default_dim)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name, shape, _", NATIVE)
@pytest.mark.parametrize("feat_dim", [2, 17])
def test_native_backbones_take_feat_dim(name, shape, _, feat_dim):
    backbone = build_backbone(name, input_shape=shape, feat_dim=feat_dim)

    assert backbone.out_dim == feat_dim
    assert backbone(torch.randn(3, *shape)).shape == (3, feat_dim)


def test_backbones_list():
    assert BACKBONES == ("digits-cnn", "convnet6", "cnn28", "resnet20")


def test_convnet6_has_six_convolutions_and_prelu():
    backbone = build_backbone("convnet6", input_shape=(1, 28, 28), feat_dim=2)
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]

    assert [c.out_channels for c in convs] == [32, 32, 64, 64, 128, 128]
    assert any(isinstance(m, nn.PReLU) for m in backbone.modules())


def test_resnet20_structure():
    backbone = build_backbone("resnet20", input_shape=(3, 32, 32))
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    n_params = sum(p.numel() for p in backbone.parameters())

    # 1 stem + 3 stages x 3 blocks x 2 convolutions = 19, + the classifier = 20 layers.
    assert len(convs) == 19
    assert sorted({c.out_channels for c in convs}) == [16, 32, 64]
    # He et al. report 0.27M parameters for ResNet-20 (with its 650-weight classifier).
    assert 0.26e6 < n_params < 0.28e6
    assert isinstance(backbone.proj, nn.Identity)
    assert isinstance(build_backbone("resnet20", input_shape=(3, 32, 32), feat_dim=8).proj,
                      nn.Linear)


def test_backward_reaches_every_parameter():
    backbone = build_backbone("cnn28", input_shape=(1, 28, 28))
    backbone(torch.randn(4, 1, 28, 28)).square().sum().backward()

    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.parameters())


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)])
def test_torchvision_resnet18(shape):
    backbone = build_backbone("tv:resnet18", input_shape=shape)

    assert backbone.out_dim == 512
    assert isinstance(backbone.model.fc, nn.Identity)
    assert backbone(torch.randn(2, *shape)).shape == (2, 512)


def test_torchvision_projection_and_grey_repeat():
    backbone = build_backbone("tv:mobilenet_v3_small", input_shape=(1, 28, 28), feat_dim=10)
    x = torch.randn(2, 1, 28, 28)

    assert backbone.out_dim == 10
    assert isinstance(backbone.proj, nn.Linear) and backbone.proj.in_features == 1024
    backbone.eval()
    with torch.no_grad():
        # Repeating the grey channel is the same as feeding the RGB image.
        rgb = backbone.proj(backbone.model(x.repeat(1, 3, 1, 1)))
        torch.testing.assert_close(backbone(x), rgb)


@pytest.mark.parametrize("name, layer", [("tv:mobilenet_v3_small", "classifier.3"),
                                         ("tv:squeezenet1_1", "classifier.1")])
def test_torchvision_classifier_inside_sequential(name, layer):
    # The scores come from a Linear (MobileNet) or a 1x1 Conv2d (SqueezeNet).
    backbone = build_backbone(name, input_shape=(3, 64, 64))

    assert isinstance(backbone.model.get_submodule(layer), nn.Identity)
    assert backbone(torch.randn(2, 3, 64, 64)).shape == (2, backbone.out_dim)


def test_unknown_names():
    with pytest.raises(GmcliError, match=r"'vgg99'.*digits-cnn, convnet6, cnn28, resnet20.*tv:"):
        build_backbone("vgg99", input_shape=(3, 32, 32))
    with pytest.raises(GmcliError, match=r"'resnet19'.*tv:resnet18"):
        build_backbone("tv:resnet19", input_shape=(3, 32, 32))


@pytest.mark.parametrize(
    "name, shape",
    [("digits-cnn", (1, 28, 28)), ("convnet6", (3, 28, 28)), ("cnn28", (1, 32, 32)),
     ("resnet20", (3, 28, 28))],
)
def test_wrong_input_shape_names_backbone_and_shape(name, shape):
    with pytest.raises(GmcliError) as info:
        build_backbone(name, input_shape=shape)
    assert repr(name) in str(info.value) and str(shape) in str(info.value)


def test_torchvision_rejects_channels_and_too_small_inputs():
    with pytest.raises(GmcliError, match=r"tv:resnet18.*\(4, 32, 32\)"):
        build_backbone("tv:resnet18", input_shape=(4, 32, 32))
    with pytest.raises(GmcliError, match=r"tv:alexnet.*does not accept"):
        build_backbone("tv:alexnet", input_shape=(3, 8, 8))


def test_bad_feat_dim():
    with pytest.raises(GmcliError, match="feat_dim.*0"):
        build_backbone("cnn28", input_shape=(1, 28, 28), feat_dim=0)
