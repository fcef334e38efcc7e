"""torchvision classifiers adapted to small inputs (3x3 stride-1 stem, any channel count)."""
from __future__ import annotations

from torch import nn

from kdx.data.base import Dataset
from kdx.models.base import Classifier
from kdx.registry import MODELS


def _need_image(data: Dataset, name: str):
    data.require("image", f"model '{name}'", "'cnn' or 'mlp'" if data.modality == "signal"
                 else "a text model: bert, bag_of_embeddings or text_cnn")


@MODELS.register(context=("data",))
def resnet18(data: Dataset) -> Classifier:
    """torchvision ResNet-18 (11M params) with a CIFAR-style stem: 3x3 stride-1 conv, no max-pool."""
    _need_image(data, "resnet18")
    import torchvision  # imported on use: it costs 2.5 s at start-up

    net = torchvision.models.resnet18(num_classes=1)
    net.conv1 = nn.Conv2d(data.input_shape[0], 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return Classifier(net, 512, data.num_classes, data.mean, data.std)


@MODELS.register(context=("data",))
def mobilenet_v3_small(data: Dataset, width_mult: float = 1.0) -> Classifier:
    """torchvision MobileNetV3-Small with a stride-1 stem for small images."""
    _need_image(data, "mobilenet_v3_small")
    import torchvision

    net = torchvision.models.mobilenet_v3_small(num_classes=1, width_mult=width_mult)
    stem = net.features[0][0]
    net.features[0][0] = nn.Conv2d(data.input_shape[0], stem.out_channels, 3, 1, 1, bias=False)
    feature_dim = net.classifier[0].in_features
    net.classifier = nn.Identity()
    return Classifier(net, feature_dim, data.num_classes, data.mean, data.std)
