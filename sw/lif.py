"""LIF neurons of QP-SNN with a surrogate gradient.

``u[t] = tau * u[t-1] * (1 - s[t-1]) + I[t]``, ``s[t] = [u[t] >= V_th]``, tau = 0.5, V_th = 1,
hard reset to zero. The rectangular surrogate has width 1 around the threshold.
"""
from __future__ import annotations

import torch

TAU = 0.5
V_TH = 1.0


class SpikeRect(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u):
        ctx.save_for_backward(u)
        return (u >= V_TH).to(u.dtype)

    @staticmethod
    def backward(ctx, grad):
        (u,) = ctx.saved_tensors
        return grad * ((u - V_TH).abs() < 0.5).to(grad.dtype)


def lif_sequence(current: torch.Tensor, record: bool = False):
    """Run LIF over the leading time axis of ``current`` ([T, ...]); return spikes [T, ...] (and membranes)."""
    u = torch.zeros_like(current[0])
    s = torch.zeros_like(current[0])
    spikes, membranes = [], []
    for t in range(current.shape[0]):
        u = TAU * u * (1 - s.detach()) + current[t]
        s = SpikeRect.apply(u)
        spikes.append(s)
        if record:
            membranes.append(u)
    out = torch.stack(spikes)
    return (out, torch.stack(membranes)) if record else out
