"""Weight quantizers of QP-SNN: the uniform baseline and ReScaW, both with a straight-through estimator.

Both map a weight to one of 2^b odd, symmetric levels with no zero: code q in [0, 2^b - 1] stands for
the odd integer ``2q - (2^b - 1)``, times a scale. The baseline's scale is ``1 / (2^b - 1)`` for every
kernel; ReScaW multiplies it by ``gamma_k = mean(|W_k|)`` of each output kernel, so that the few levels
cover the range the kernel actually uses instead of [-1, 1].
"""
from __future__ import annotations

import torch


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def levels(bits: int) -> int:
    return (1 << bits) - 1


def kernel_gamma(weight: torch.Tensor, mode: str) -> torch.Tensor:
    """Per output kernel scale, shaped to broadcast against ``weight``; ones for the baseline."""
    shape = (weight.shape[0],) + (1,) * (weight.dim() - 1)
    if mode == "uniform":
        return torch.ones(shape, dtype=weight.dtype, device=weight.device)
    if mode == "rescaw":
        return weight.abs().flatten(1).mean(1).clamp_min(1e-8).view(shape)
    if mode == "maxabs":
        # The 8-bit first layer: 255 levels resolve the whole range, so clipping at mean |W| would only lose it.
        return weight.abs().flatten(1).amax(1).clamp_min(1e-8).view(shape)
    if mode == "maxabs-layer":
        # The output layer: one scale for all classes, because the class is an argmax of integer potentials.
        return weight.abs().amax().clamp_min(1e-8).expand(shape)
    raise ValueError(f"unknown quantization mode {mode!r}")


def quantize_codes(weight: torch.Tensor, bits: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes q in [0, 2^b-1] and the per-kernel gamma (no gradient)."""
    with torch.no_grad():
        gamma = kernel_gamma(weight, mode)
        n = levels(bits) / 2
        codes = torch.round((torch.clamp(weight / gamma, -1, 1) + 1) * n)
    return codes.to(torch.int64), gamma


def fake_quantize(weight: torch.Tensor, bits: int, mode: str) -> torch.Tensor:
    """The quantized weight in float, differentiable through the STE (clamp passes gradient inside [-1, 1])."""
    gamma = kernel_gamma(weight, mode)  # not detached: gamma is a function of W, its gradient reaches every weight
    n = levels(bits) / 2
    clipped = torch.clamp(weight / gamma, -1, 1)
    return gamma * (_RoundSTE.apply((clipped + 1) * n) / n - 1)


def code_to_int(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """The paper's odd-level map: code q means the integer 2q - (2^b - 1)."""
    return 2 * codes - levels(bits)


def int_to_code(values: torch.Tensor, bits: int) -> torch.Tensor:
    return (values + levels(bits)) // 2
