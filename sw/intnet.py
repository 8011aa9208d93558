"""The integer network: what a `.qpsnn` file holds and what the golden model, the cycle model and the
accelerator all execute (contract 1 of the design).

Per firing layer and timestep: ``V = (V_prev_after_reset >> leak_shift) + bias + sum(events' weights)``,
spike when ``V >= threshold``, then hard reset to 0. A weight is the odd integer ``2q - (2^b - 1)`` of its
b-bit code q, shifted left by the layer's ``weight_shift``; an input pixel's bit k adds ``w << k``. The
output layer adds its current and bias every timestep, never fires and never leaks; the class is the
argmax of its potential, ties to the lowest index. ``membrane_bits`` is chosen by the fold from a worst-case
bound, so the saturation the golden model applies can never trigger.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

LEAK_SHIFT = 1  # tau = 0.5
INPUT_BITS = 8


@dataclass
class IntLayer:
    kind: str  # "conv" | "fc" | "output"
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]  # after pooling
    pool: int
    bits: int
    codes: torch.Tensor  # int64, conv [O, I, 3, 3], fc [O, I]
    weight_shift: int
    threshold: torch.Tensor | None  # int64 [O]; None for the output layer
    bias: torch.Tensor  # int64 [O]
    membrane_bits: int
    kept_channels: list[int] = field(default_factory=list)

    @property
    def fires(self) -> bool:
        return self.kind != "output"

    @property
    def channels(self) -> int:
        return self.codes.shape[0]

    @property
    def neuron_shape(self) -> tuple[int, ...]:
        """Shape of the membrane array (before pooling)."""
        if self.kind == "conv":
            return (self.channels, self.in_shape[1], self.in_shape[2])
        return (self.channels,)

    def weights(self) -> torch.Tensor:
        """Signed integer weights (before the shift)."""
        return 2 * self.codes - ((1 << self.bits) - 1)

    def weight_rows(self) -> torch.Tensor:
        """Codes as the weight memory holds them: one row per input event source, one column per output.

        Conv rows are ordered (input channel, ky, kx); an event at input (c, y, x) reads rows c*9 + ky*3 + kx
        and adds them to outputs (y - ky + 1, x - kx + 1) where those lie inside the map.
        """
        if self.kind == "conv":
            o, i = self.codes.shape[:2]
            return self.codes.permute(1, 2, 3, 0).reshape(i * 9, o)
        return self.codes.t().contiguous()

    @staticmethod
    def codes_from_rows(kind: str, rows: torch.Tensor, in_channels: int) -> torch.Tensor:
        if kind == "conv":
            return rows.reshape(in_channels, 3, 3, -1).permute(3, 0, 1, 2).contiguous()
        return rows.t().contiguous()


@dataclass
class IntNet:
    layers: list[IntLayer]
    timesteps: int
    classes: int
    in_shape: tuple[int, int, int]
    lanes: int = 8
    leak_shift: int = LEAK_SHIFT
    provenance: dict = field(default_factory=dict)
