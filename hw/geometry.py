"""Geometry of the accelerator for one model: how neurons, weights and spike queues map to memory words.

Shared by the RTL generator, the cycle model and the testbenches, so all three address memories the same
way. Neuron (o, y, x) of a conv layer lives in lane o % P at a *window-major* address: with 2x2 pooling the
four neurons of a pool window are consecutive, so the fire scan can OR them and emit one queue entry per
window. Queue entries are (group, position, P-bit spike mask): one entry carries up to P events.
"""
from __future__ import annotations

from dataclasses import dataclass

from qpsnn.sw.errors import QpsnnError
from qpsnn.sw.intnet import IntLayer, IntNet
from qpsnn.sw.packing import words_per_row


class CapacityError(QpsnnError, ValueError):
    """A model that does not fit the memories the accelerator was given; names the memory and the overflow."""


def _bits_for(n: int) -> int:
    return max(1, (max(n, 1) - 1).bit_length())


@dataclass(frozen=True)
class LayerGeometry:
    index: int
    kind: str  # conv | fc | output
    lanes: int
    channels: int  # output channels / neurons
    in_channels: int
    height: int  # neuron map (1 for fc)
    width: int
    pool: int
    in_height: int  # the event map this layer receives (pooled output of the previous layer)
    in_width: int
    bits: int
    weight_shift: int
    membrane_bits: int
    weight_rows: int
    first: bool

    @property
    def fires(self) -> bool:
        return self.kind != "output"

    @property
    def groups(self) -> int:
        return words_per_row(self.channels, self.lanes)

    @property
    def positions(self) -> int:
        return self.height * self.width

    @property
    def neuron_words(self) -> int:
        """Words per membrane bank: one per (group, position)."""
        return self.groups * self.positions

    @property
    def weight_words(self) -> int:
        return self.weight_rows * self.groups

    @property
    def word_bits(self) -> int:
        return self.lanes * self.bits

    @property
    def pooled_height(self) -> int:
        return self.height // self.pool

    @property
    def pooled_width(self) -> int:
        return self.width // self.pool

    @property
    def out_positions(self) -> int:
        return self.pooled_height * self.pooled_width

    def neuron_address(self, group: int, y: int, x: int) -> int:
        p = self.pool
        py, dy, px, dx = y // p, y % p, x // p, x % p
        return ((group * self.pooled_height + py) * self.pooled_width + px) * p * p + dy * p + dx

    def neuron_at(self, address: int, lane: int) -> tuple[int, ...]:
        """(o, y, x) for conv, (o,) for fc, of a membrane word address and lane; inverse of neuron_address."""
        p = self.pool
        window, within = divmod(address, p * p)
        group, pos = divmod(window, self.out_positions)
        py, px = divmod(pos, self.pooled_width)
        dy, dx = divmod(within, p)
        o = group * self.lanes + lane
        return (o,) if self.kind != "conv" else (o, py * p + dy, px * p + dx)

    def valid_offsets(self, y: int, x: int) -> int:
        """Kernel offsets of an input event at (y, x) whose output lies inside the map."""
        if self.kind != "conv":
            return 1
        ky = min(2, y + 1) - max(0, y + 2 - self.height) + 1
        kx = min(2, x + 1) - max(0, x + 2 - self.width) + 1
        return ky * kx

    def event_cycles(self, y: int, x: int) -> int:
        """Update cycles of one event: each valid offset times each group of P outputs."""
        return self.valid_offsets(y, x) * self.groups

    def fanout(self, y: int, x: int) -> int:
        return self.valid_offsets(y, x) * self.channels

    def scan_words(self) -> int:
        return self.neuron_words


@dataclass(frozen=True)
class Geometry:
    lanes: int
    timesteps: int
    classes: int
    leak_shift: int
    in_shape: tuple[int, int, int]
    layers: tuple[LayerGeometry, ...]

    @property
    def membrane_bits(self) -> int:
        return max(layer.membrane_bits for layer in self.layers)


def geometry_of(net: IntNet, lanes: int | None = None) -> Geometry:
    lanes = lanes or net.lanes
    layers = []
    for i, layer in enumerate(net.layers):
        layers.append(_layer_geometry(i, layer, lanes))
    for lg in layers:
        if lg.kind == "conv" and lg.pool == 2 and (lg.height % 2 or lg.width % 2):
            raise CapacityError(f"layer {lg.index}: 2x2 pooling of a {lg.height}x{lg.width} map needs even sizes in hardware")
    return Geometry(lanes, net.timesteps, net.classes, net.leak_shift, tuple(net.in_shape), tuple(layers))


def _layer_geometry(i: int, layer: IntLayer, lanes: int) -> LayerGeometry:
    if layer.kind == "conv":
        c_in, h, w = layer.in_shape
        in_h, in_w = h, w
    else:
        c_in, h, w = layer.in_shape[0], 1, 1
        shape = layer.in_shape
        in_h, in_w = (shape[1], shape[2]) if len(shape) == 3 else (1, 1)
    return LayerGeometry(
        index=i, kind=layer.kind, lanes=lanes, channels=layer.channels, in_channels=c_in, height=h, width=w,
        pool=layer.pool, in_height=in_h, in_width=in_w, bits=layer.bits, weight_shift=layer.weight_shift,
        membrane_bits=layer.membrane_bits, weight_rows=int(layer.weight_rows().shape[0]), first=(i == 0))


@dataclass(frozen=True)
class Capacities:
    """Memory sizes of a built accelerator, per layer: words of weights and of membranes (per bank)."""
    weight_words: tuple[int, ...]
    neuron_words: tuple[int, ...]

    @classmethod
    def exactly(cls, geo: Geometry) -> "Capacities":
        return cls(tuple(l.weight_words for l in geo.layers), tuple(l.neuron_words for l in geo.layers))


def check_fits(geo: Geometry, caps: Capacities) -> None:
    if len(caps.weight_words) != len(geo.layers):
        raise CapacityError(f"the accelerator has {len(caps.weight_words)} layers, the model {len(geo.layers)}")
    for lg, wcap, ncap in zip(geo.layers, caps.weight_words, caps.neuron_words):
        if lg.weight_words > wcap:
            raise CapacityError(f"weight memory of layer {lg.index}: the model needs {lg.weight_words} words of "
                                f"{lg.word_bits} bits, the memory has {wcap} (overflow {lg.weight_words - wcap} words)")
        if lg.neuron_words > ncap:
            raise CapacityError(f"membrane memory of layer {lg.index}: the model needs {lg.neuron_words} words per lane, "
                                f"the memory has {ncap} (overflow {lg.neuron_words - ncap} words)")
