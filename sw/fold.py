"""Fold a trained QP-SNN into integers: BatchNorm, ReScaW's gamma, the code scale and the input scale all
become per-channel integer thresholds and biases, so the datapath needs adders and comparators only.

For channel k the float current is ``m_k * A_k + beta_k`` with A_k the integer accumulation of odd weight
integers times spikes (or 8-bit pixels). Dividing the LIF equation by ``m_k / 2^F`` gives an integer
membrane with threshold ``ceil(2^F / m_k)`` and bias ``round(2^F * beta_k / m_k)``; F (``weight_shift``) is
chosen per layer so every threshold has at least ``PRECISION_BITS`` bits. A negative ``m_k`` (negative
BatchNorm gain) is folded into the codes: the odd code map is symmetric, so ``q -> 2^b - 1 - q`` negates.
"""
from __future__ import annotations

import math

import torch

from .errors import QpsnnError
from .intnet import INPUT_BITS, LEAK_SHIFT, IntLayer, IntNet
from .model import QPSNN
from .quant import levels, quantize_codes

PRECISION_BITS = 10
MAX_SHIFT = 24


def _shift_for(scale_max: float) -> int:
    """Smallest F >= 0 with 2^F / scale_max >= 2^PRECISION_BITS."""
    return int(min(MAX_SHIFT, max(0, math.ceil(PRECISION_BITS + math.log2(max(scale_max, 1e-30))))))


def _signed_bits(bound: float) -> int:
    return max(2, int(math.ceil(math.log2(bound + 1))) + 1)


@torch.no_grad()
def fold(model: QPSNN, lanes: int = 8, kept_channels: dict[int, list[int]] | None = None,
         provenance: dict | None = None) -> IntNet:
    if model.quant.mode == "float":
        raise QpsnnError("a float model has no integer fold: train with --quant rescaw or uniform")
    model.eval()
    layers: list[IntLayer] = []
    count = len(model.spec.layers)
    for i, (spec, layer, norm) in enumerate(zip(model.spec.layers, model.layers, model.norms)):
        codes, gamma = quantize_codes(layer.weight, layer.bits, layer.mode)
        scale = gamma.flatten().double() / levels(layer.bits)  # s_k
        x_max = (1 << INPUT_BITS) - 1 if i == 0 else 1
        if i == 0:
            scale = scale / x_max
        ishape, oshape = model.shapes[i]
        if spec.kind == "output":
            if not torch.allclose(scale, scale[0].expand_as(scale)):
                raise QpsnnError("the output layer needs one scale for all classes (maxabs-layer)")
            s = float(scale[0])
            shift = _shift_for(s)
            unit = s / (1 << shift)  # float value of one membrane step
            bias = torch.round(layer.bias.double() / unit).to(torch.int64)
            threshold = None
        else:
            a = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
            beta = norm.bias.double() - a * norm.running_mean.double()
            m = a * scale
            flip = m < 0
            codes[flip] = levels(layer.bits) - codes[flip]
            m = m.abs().clamp_min(1e-12)
            shift = _shift_for(float(m.max()))
            unit = m / (1 << shift)
            threshold = torch.ceil(1.0 / unit).to(torch.int64)
            bias = torch.round(beta / unit).to(torch.int64)
        weights = (2 * codes - levels(layer.bits)).abs().flatten(1).sum(1).double()
        current = weights * x_max * (1 << shift) + bias.abs().double()  # per-timestep |I + bias| bound
        if threshold is None:
            bound = float(current.max()) * model.timesteps
        else:
            bound = float(torch.maximum(2 * current, threshold.double() / 2 + current).max())
        kept = (kept_channels or {}).get(i, list(range(spec.out_channels)))
        layers.append(IntLayer(
            kind=spec.kind, in_shape=tuple(ishape), out_shape=tuple(oshape), pool=spec.pool,
            bits=layer.bits, codes=codes.cpu(), weight_shift=shift,
            threshold=None if threshold is None else threshold.cpu(), bias=bias.cpu(),
            membrane_bits=_signed_bits(bound), kept_channels=[int(c) for c in kept]))
    return IntNet(layers, model.timesteps, model.spec.num_classes, tuple(model.in_shape), lanes, LEAK_SHIFT,
                  dict(provenance or {}))
