"""torchvision classifiers adapted to small inputs (3x3 stride-1 stem, any channel count)."""
from __future__ import annotations

from torch import nn

from kdx.data.base import Dataset
from kdx.models.base import Classifier, require_image
from kdx.registry import MODELS


@MODELS.register(context=("data",))
def resnet18(data: Dataset) -> Classifier:
    """torchvision ResNet-18 (11M params) with a CIFAR-style stem: 3x3 stride-1 conv, no max-pool."""
    require_image(data, "model 'resnet18'")
    import torchvision  # imported on use: it costs 2.5 s at start-up

    net = torchvision.models.resnet18(num_classes=1)
    net.conv1 = nn.Conv2d(data.input_shape[0], 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return Classifier(net, 512, data.num_classes, data.mean, data.std)


@MODELS.register(context=("data",))
def mobilenet_v3_small(data: Dataset, width_mult: float = 1.0) -> Classifier:
    """torchvision MobileNetV3-Small with a stride-1 stem for small images."""
    require_image(data, "model 'mobilenet_v3_small'")
    import torchvision

    net = torchvision.models.mobilenet_v3_small(num_classes=1, width_mult=width_mult)
    stem = net.features[0][0]
    net.features[0][0] = nn.Conv2d(data.input_shape[0], stem.out_channels, 3, 1, 1, bias=False)
    feature_dim = net.classifier[0].in_features
    net.classifier = nn.Identity()
    return Classifier(net, feature_dim, data.num_classes, data.mean, data.std)
