"""The integer golden reference: runs an `IntNet` on 8-bit images, batched, in exact integer arithmetic.

Convolutions run in float64, which is exact for these integers (|sum| < 2^53, checked), then everything
is int64. With ``trace=True`` it also returns every membrane value and spike per layer, timestep and
neuron: the record the RTL testbenches compare against.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .intnet import IntLayer, IntNet

EXACT_LIMIT = 2 ** 52


@dataclass
class LayerTrace:
    membrane: torch.Tensor  # int64 [T, N, *neuron_shape], value compared with the threshold (before reset)
    spikes: torch.Tensor  # bool [T, N, *neuron_shape], before pooling


@dataclass
class GoldenResult:
    classes: torch.Tensor  # int64 [N]
    potentials: torch.Tensor  # int64 [N, K]
    input_events: torch.Tensor  # int64 [N]: set bits of the 8-bit pixels
    layer_events: list[torch.Tensor]  # int64 [N] per layer: events arriving at the layer (inputs once)
    layer_sops: list[torch.Tensor]  # int64 [N] per layer: synaptic operations (event x valid fan-out)
    spikes: torch.Tensor  # int64 [N]: spikes of all firing layers over all timesteps
    trace: list[LayerTrace] = field(default_factory=list)

    @property
    def sops(self) -> torch.Tensor:
        return torch.stack(self.layer_sops).sum(0)


def popcount8(images: torch.Tensor) -> torch.Tensor:
    x = images.to(torch.int64)
    return sum(((x >> k) & 1) for k in range(8))


def _accumulate(layer: IntLayer, x: torch.Tensor) -> torch.Tensor:
    """Integer current sum(w * x) << shift for inputs x (int64, [N, C, H, W] or [N, I])."""
    w = layer.weights().double()
    xd = x.double()
    if layer.kind == "conv":
        acc = F.conv2d(xd, w, padding=1)
        bound = F.conv2d(xd.abs(), w.abs(), padding=1)
    else:
        xd = xd.flatten(1)
        acc = xd @ w.t()
        bound = xd.abs() @ w.abs().t()
    if bound.numel() and float(bound.max()) * (1 << layer.weight_shift) >= EXACT_LIMIT:
        raise OverflowError("accumulation exceeds exact float64 range")
    return acc.to(torch.int64) << layer.weight_shift


def _fanout_sops(layer: IntLayer, events: torch.Tensor) -> torch.Tensor:
    """Synaptic operations for event counts per input neuron, [N, C, H, W] or [N, I]."""
    if layer.kind == "conv":
        h, w = events.shape[-2:]
        valid = F.conv2d(torch.ones(1, 1, h, w, dtype=torch.float64), torch.ones(1, 1, 3, 3, dtype=torch.float64),
                         padding=1)[0, 0].to(torch.int64)
        return (events * valid).flatten(1).sum(1) * layer.channels
    return events.flatten(1).sum(1) * layer.channels


def _saturate(v: torch.Tensor, bits: int) -> torch.Tensor:
    lim = 1 << (bits - 1)
    return v.clamp(-lim, lim - 1)


def _bcast(v: torch.Tensor, layer: IntLayer) -> torch.Tensor:
    return v.view(1, -1, 1, 1) if layer.kind == "conv" else v.view(1, -1)


@torch.no_grad()
def run_golden(net: IntNet, images: torch.Tensor, trace: bool = False) -> GoldenResult:
    """images: uint8 [N, C, H, W]."""
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8:
        raise TypeError("the golden model takes uint8 images")
    if tuple(images.shape[1:]) != tuple(net.in_shape):
        raise ValueError(f"images of shape {tuple(images.shape[1:])} do not fit the model's input {net.in_shape}")
    n, T = images.shape[0], net.timesteps
    pixels = images.to(torch.int64)
    first_current = _accumulate(net.layers[0], pixels)  # computed once, reused every timestep
    input_events = popcount8(images).flatten(1).sum(1)
    layer_events = [input_events]
    layer_sops = [_fanout_sops(net.layers[0], popcount8(images))]
    for layer in net.layers[1:]:
        layer_events.append(torch.zeros(n, dtype=torch.int64))
        layer_sops.append(torch.zeros(n, dtype=torch.int64))
    state = [_bcast(layer.bias, layer).expand(n, *layer.neuron_shape).clone() for layer in net.layers]
    traces = [([], []) for _ in net.layers]
    spikes_total = torch.zeros(n, dtype=torch.int64)
    for t in range(T):
        x = None
        for i, layer in enumerate(net.layers):
            if i == 0:
                current = first_current
            else:
                current = _accumulate(layer, x)
                counts = x.to(torch.int64)
                layer_events[i] += counts.flatten(1).sum(1)
                layer_sops[i] += _fanout_sops(layer, counts)
            v = _saturate(state[i] + current, layer.membrane_bits)
            bias = _bcast(layer.bias, layer)
            if not layer.fires:
                if trace:
                    traces[i][0].append(v.clone())
                    traces[i][1].append(torch.zeros_like(v, dtype=torch.bool))
                state[i] = _saturate(v + bias, layer.membrane_bits) if t + 1 < T else v
                continue
            s = v >= _bcast(layer.threshold, layer)
            if trace:
                traces[i][0].append(v.clone())
                traces[i][1].append(s.clone())
            spikes_total += s.flatten(1).sum(1)
            state[i] = _saturate((torch.where(s, 0, v) >> net.leak_shift) + bias, layer.membrane_bits)
            x = F.max_pool2d(s.to(torch.float32), layer.pool).to(torch.int64) if layer.pool > 1 else s.to(torch.int64)
    potentials = state[-1]
    classes = potentials.argmax(1)  # torch returns the first maximal index: ties go to the lowest class
    out = GoldenResult(classes, potentials, input_events, layer_events, layer_sops, spikes_total)
    if trace:
        out.trace = [LayerTrace(torch.stack(m), torch.stack(s)) for m, s in traces]
    return out
