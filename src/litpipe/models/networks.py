"""litpipe's own networks. Each hidden block is a named child, so analysis can hook its activations. Their
arguments' annotations are what `model.kwargs` is checked against (models/zoo.py), ranges included."""

from typing import Annotated

import torch
from pydantic import Field
from torch import nn

Units = Annotated[int, Field(ge=1, le=2**31 - 1)]
Layers = Annotated[int, Field(ge=1, le=2**31 - 1)]
Rate = Annotated[float, Field(ge=0, lt=1)]


class MLP(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: Units, depth: Layers, dropout: Rate):
        super().__init__()
        self.flatten = nn.Flatten()
        features = int(torch.tensor(input_shape).prod())
        self.hidden = nn.ModuleDict()
        for i in range(depth):
            self.hidden[f"hidden{i + 1}"] = nn.Sequential(nn.Linear(features, width), nn.ReLU())
            features = width
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)
        for block in self.hidden.values():
            x = self.dropout(block(x))
        return self.head(x)


class CNN(nn.Module):
    """Conv blocks (3x3 conv, ReLU, 2x2 max-pool while the image is large enough), global average pool."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: Units, depth: Layers, dropout: Rate):
        super().__init__()
        channels, size = input_shape[0], input_shape[-1]
        self.hidden = nn.ModuleDict()
        for i in range(depth):
            out = width * 2**i
            layers: list[nn.Module] = [nn.Conv2d(channels, out, 3, padding=1), nn.ReLU()]
            if size >= 4:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            self.hidden[f"conv{i + 1}"] = nn.Sequential(*layers)
            channels = out
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.hidden.values():
            x = block(x)
        return self.head(self.dropout(self.pool(x)))


NETWORKS = {"mlp": MLP, "cnn": CNN}
