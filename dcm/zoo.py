"""Reference models of the paper (Table 1): LeNet-300-100, LeNet-5 (Caffe variant), AlexNet, VGG-16."""
from __future__ import annotations

import torch.nn as nn


class LeNet300(nn.Module):
    """784-300-100-10 MLP: 266,610 parameters."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(784, 300), nn.Linear(300, 100), nn.Linear(100, 10)

    def forward(self, x):
        x = x.flatten(1)
        return self.fc3(self.fc2(self.fc1(x).relu()).relu())


class LeNet5(nn.Module):
    """Caffe's LeNet: conv 20, conv 50, fc 500, fc 10 (431,080 parameters)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 20, 5), nn.Conv2d(20, 50, 5)
        self.fc1, self.fc2 = nn.Linear(800, 500), nn.Linear(500, 10)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        x = self.pool(self.conv1(x))
        x = self.pool(self.conv2(x)).flatten(1)
        return self.fc2(self.fc1(x).relu())


def alexnet(num_classes: int = 1000) -> nn.Module:
    """AlexNet as in the paper's Table 4 (61M parameters; single-tower variant)."""
    return nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(), nn.LocalResponseNorm(5), nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2), nn.ReLU(), nn.LocalResponseNorm(5), nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Flatten(),
        nn.Linear(9216, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, num_classes))


def vgg16(num_classes: int = 1000) -> nn.Module:
    """VGG-16 (138M parameters)."""
    layers: list[nn.Module] = []
    c = 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
            c = v
    layers += [nn.Flatten(), nn.Linear(25088, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
               nn.Linear(4096, num_classes)]
    return nn.Sequential(*layers)


MODELS = {"lenet300": LeNet300, "lenet5": LeNet5}
