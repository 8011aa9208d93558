"""Geometry of the accelerator for one model: how neurons, weights and spike queues map to memory words.

Shared by the RTL generator, the cycle model and the testbenches, so all three address memories the same
way. Neuron (o, y, x) of a conv layer lives in lane o % P at a *window-major* address: with 2x2 pooling the
four neurons of a pool window are consecutive, so the fire scan can OR them and emit one queue entry per
window. Queue entries are (group, position, P-bit spike mask): one entry carries up to P events.

With ``offsets=9`` (kernel-parallel) the membranes of a conv layer after the first are *interleaved* over
nine banks by ``(y mod 3, x mod 3)``: the nine outputs one input event reaches are then always in nine
different banks, so all nine kernel offsets update in one cycle. The window-major address stays the
logical name of a neuron (trace, fire-scan order); `bank_of` gives its bank and word within the bank.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import QpsnnError
from .intnet import IntLayer, IntNet
from .packing import words_per_row


class CapacityError(QpsnnError, ValueError):
    """A model that does not fit the memories the accelerator was given; names the memory and the overflow."""


KERNEL = 3  # every conv is 3x3, padding 1
PARALLEL_OFFSETS = KERNEL * KERNEL
OFFSET_CHOICES = (1, PARALLEL_OFFSETS)
DEFAULT_OFFSETS = PARALLEL_OFFSETS  # the simulations' default; a board build picks its own (`boards.py`)
ENCODER_LATENCY = 3  # cycles from a neuron's last issue in the encoder to its record of timestep 0


def lif_steps(lanes: int, timesteps: int) -> int:
    """Steps per timestep of an unrolled layer's one LIF datapath, which takes lanes / steps lanes at a time:
    as many steps as fit all T of them into a neuron's nine issue cycles, so the LIF never holds up the issue
    and one lane's logic serves many (P = 2, T = 2: one lane, 4 steps)."""
    steps = lanes
    while steps > 1 and timesteps * steps > PARALLEL_OFFSETS:
        steps //= 2
    return steps


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


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
    offsets: int = 1  # kernel offsets updated per cycle (1, or 9 = kernel-parallel)
    unrolled: bool = False  # a hidden conv layer run time-unrolled and dense (`qpsnn.hw.unrolled_layer`)

    @property
    def time_unrolled(self) -> bool:
        """Emits a neuron's spikes for every timestep at once (the encoder, an unrolled layer): the next layer
        holds one queue region per timestep."""
        return self.first or self.unrolled

    @property
    def hw_kind(self) -> str:
        """The kind the device reports (`qpsnn.sw.protocol.KINDS`)."""
        return "unrolled" if self.unrolled else self.kind

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
    def interleaved(self) -> bool:
        """Membranes spread over nine banks so one event updates all its kernel offsets in one cycle."""
        return self.kind == "conv" and self.offsets == PARALLEL_OFFSETS and not self.first and not self.unrolled

    @property
    def weight_memories(self) -> int:
        """Conv layers built kernel-parallel keep one weight memory per kernel offset, read together."""
        return PARALLEL_OFFSETS if self.kind == "conv" and self.offsets == PARALLEL_OFFSETS else 1

    @property
    def overlaps_load(self) -> bool:
        """The kernel-parallel encoder issues a neuron per cycle, as fast as pixels arrive, so it runs while the
        image loads; the serial one (9 C cycles a neuron) would gain under 2 % and waits for the whole image
        instead, which needs no freeze and keeps its logic."""
        return self.first and self.weight_memories == PARALLEL_OFFSETS

    @property
    def banks(self) -> int:
        return PARALLEL_OFFSETS if self.interleaved else 1

    @property
    def bank_height(self) -> int:
        return _ceil_div(self.height, KERNEL) if self.interleaved else self.height

    @property
    def bank_width(self) -> int:
        return _ceil_div(self.width, KERNEL) if self.interleaved else self.width

    @property
    def bank_words(self) -> int:
        """Words of each membrane bank."""
        return self.groups * self.bank_height * self.bank_width if self.interleaved else self.neuron_words

    def bank_of(self, group: int, y: int, x: int) -> tuple[int, int]:
        """(bank, word) of neuron position (y, x) of ``group``; a single bank holds the window-major address."""
        if not self.interleaved:
            return 0, self.neuron_address(group, y, x)
        return (y % KERNEL) * KERNEL + x % KERNEL, (group * self.bank_height + y // KERNEL) * self.bank_width + x // KERNEL

    @property
    def neuron_words(self) -> int:
        """Words per membrane bank: one per (group, position)."""
        return self.groups * self.positions

    @property
    def channel_stride(self) -> int:
        """Words per input channel in an unrolled layer's weight memory: its 9 G words padded to a power of two,
        so that an address splits into (channel, word) by its bits, with no subtracter or compare per store."""
        return 1 << (PARALLEL_OFFSETS * self.groups - 1).bit_length()

    @property
    def weight_words(self) -> int:
        return self.in_channels * self.channel_stride if self.unrolled else self.weight_rows * self.groups

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



@dataclass(frozen=True)
class Geometry:
    lanes: int
    timesteps: int
    classes: int
    leak_shift: int
    in_shape: tuple[int, int, int]
    layers: tuple[LayerGeometry, ...]
    offsets: int = 1

    @property
    def membrane_bits(self) -> int:
        return max(layer.membrane_bits for layer in self.layers)

    @property
    def unrolled(self) -> bool:
        return any(layer.unrolled for layer in self.layers)


MAX_UNROLLED_TIMESTEPS = PARALLEL_OFFSETS  # one LIF datapath steps through T within a neuron's 9 issue cycles


def geometry_of(net: IntNet, lanes: int | None = None, offsets: int = 1, unrolled: bool = False) -> Geometry:
    """``unrolled``: run layer 1 (a hidden conv layer after the encoder) time-unrolled and dense."""
    lanes = lanes or net.lanes
    if offsets not in (1, PARALLEL_OFFSETS):
        raise CapacityError(f"kernel offsets per cycle must be 1 or {PARALLEL_OFFSETS}, not {offsets}")
    layers = []
    for i, layer in enumerate(net.layers):
        layers.append(_layer_geometry(i, layer, lanes, offsets, unrolled and i == 1))
    if unrolled:
        if len(net.layers) < 3 or net.layers[1].kind != "conv":
            raise CapacityError("an unrolled layer 1 must be a hidden convolution (a conv layer after the first, "
                                "before the output layer)")
        if net.timesteps > MAX_UNROLLED_TIMESTEPS:
            raise CapacityError(f"an unrolled layer runs at most {MAX_UNROLLED_TIMESTEPS} timesteps, the model has "
                                f"{net.timesteps}")
    if layers[0].kind != "conv":
        raise CapacityError("the accelerator's first layer is a convolution (its spike-train encoder); "
                            "this model starts with a fully connected layer")
    for lg in layers:
        if lg.kind == "conv" and lg.pool == 2 and (lg.height % 2 or lg.width % 2):
            raise CapacityError(f"layer {lg.index}: 2x2 pooling of a {lg.height}x{lg.width} map needs even sizes in hardware")
    return Geometry(lanes, net.timesteps, net.classes, net.leak_shift, tuple(net.in_shape), tuple(layers), offsets)


def _layer_geometry(i: int, layer: IntLayer, lanes: int, offsets: int = 1, unrolled: bool = False) -> LayerGeometry:
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
        membrane_bits=layer.membrane_bits, weight_rows=int(layer.weight_rows().shape[0]), first=(i == 0),
        offsets=offsets, unrolled=unrolled)


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
