"""The float (training) QP-SNN: quantized conv/FC layers, BatchNorm, LIF, OR-pooling, non-firing output.

Written so that its integer fold (`fold.py`) is exact up to rounding of thresholds and biases: inputs
are 8-bit pixels divided by 255, weights are fake-quantized to the odd code levels, pooling of binary
spikes is a max (= OR), and the output layer sums its current over the T timesteps.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from .lif import lif_sequence
from .quant import fake_quantize
from .spec import NetSpec, layer_shapes


@dataclass
class QuantConfig:
    mode: str = "rescaw"  # "rescaw" | "uniform" | "float"
    bits: int = 4  # hidden layers
    edge_bits: int = 8  # first and last layer

    def layer_bits(self, index: int, count: int) -> int:
        return self.edge_bits if index in (0, count - 1) else self.bits

    def layer_mode(self, index: int, count: int) -> str:
        if self.mode == "float":
            return "float"
        if index == count - 1:
            return "maxabs-layer"
        return "maxabs" if index == 0 else self.mode


class QuantLayer(nn.Module):
    """A conv 3x3 or linear layer whose weights are fake-quantized in the forward pass."""

    def __init__(self, kind: str, in_features: int, out_features: int, bits: int, mode: str):
        super().__init__()
        self.kind, self.bits, self.mode = kind, bits, mode
        shape = (out_features, in_features, 3, 3) if kind == "conv" else (out_features, in_features)
        self.weight = nn.Parameter(torch.empty(shape))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        with torch.no_grad():  # start inside [-1, 1] scaled for the baseline quantizer too
            self.weight.mul_(2.0)
        self.bias = nn.Parameter(torch.zeros(out_features)) if kind == "output" else None

    def quantized_weight(self) -> torch.Tensor:
        if self.mode == "float":
            return self.weight
        return fake_quantize(self.weight, self.bits, self.mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.quantized_weight()
        if self.kind == "conv":
            return F.conv2d(x, w, padding=1)
        return F.linear(x, w, self.bias)


class QPSNN(nn.Module):
    def __init__(self, spec: NetSpec, in_shape: tuple[int, int, int], timesteps: int, quant: QuantConfig):
        super().__init__()
        self.spec, self.in_shape, self.timesteps, self.quant = spec, tuple(in_shape), timesteps, quant
        self.shapes = layer_shapes(spec, in_shape)
        count = len(spec.layers)
        self.layers = nn.ModuleList()
        self.norms = nn.ModuleList()
        for i, (layer, (ishape, _)) in enumerate(zip(spec.layers, self.shapes)):
            fan_in = ishape[0] if layer.kind == "conv" else int(torch.tensor(ishape).prod())
            self.layers.append(QuantLayer(layer.kind, fan_in, layer.out_channels,
                                          quant.layer_bits(i, count), quant.layer_mode(i, count)))
            if layer.kind == "conv":
                self.norms.append(nn.BatchNorm2d(layer.out_channels))
            elif layer.kind == "fc":
                self.norms.append(nn.BatchNorm1d(layer.out_channels))
            else:
                self.norms.append(nn.Identity())

    def forward(self, images: torch.Tensor, record: bool = False):
        """Logits [N, classes] (output current summed over T); with ``record`` also every firing layer's
        spikes [T, N, ...] before pooling (the neurons' own activity, which SVS scores)."""
        T, n = self.timesteps, images.shape[0]
        spikes_per_layer = []
        x = None
        for i, (spec, layer, norm) in enumerate(zip(self.spec.layers, self.layers, self.norms)):
            if i == 0:
                # Direct encoding: the static image gives the same current at every timestep.
                current = norm(layer(images)).unsqueeze(0).expand(T, *([-1] * images.dim()))
            else:
                flat = x.flatten(0, 1)
                if spec.kind != "conv":
                    flat = flat.flatten(1)
                current = layer(flat)
                if spec.kind != "output":
                    current = norm(current)
                current = current.view(T, n, *current.shape[1:])
            if spec.kind == "output":
                logits = current.sum(0)
                return (logits, spikes_per_layer) if record else logits
            s = lif_sequence(current)
            spikes_per_layer.append(s)
            if spec.pool > 1:
                s = F.max_pool2d(s.flatten(0, 1), spec.pool).view(T, n, *s.shape[2:3], *(d // spec.pool for d in s.shape[3:]))
            x = s
        raise AssertionError("spec without output layer")
