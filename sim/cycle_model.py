"""Cycle model of the accelerator: for a model and a sample, on which cycle each trace record appears and how
many cycles the sample takes; and the lower bound to measure against (docs/DESIGN.md).

The sequencer's timing, cycle 0 being the first counted cycle of LOAD:
- LOAD: one pixel per cycle (C H W), then one cycle to see the buffer full; ENCODE starts on C H W + 1.
- ENCODE (`qpsnn.hw.encoder`), starting on E: per group of P channels, P + 1 cycles to read the
  thresholds and biases lane by lane, then one issue per (neuron, input channel, 9/taps offsets), then T + 3 cycles to
  drain the pipeline; one cycle before the first group, one after the last. Record t of a neuron appears
  ``encoder.LATENCY + t`` cycles after its last issue.
- EV(l): one update per cycle, starting one cycle in (N updates in all), the next phase starts on N + 3
  (1 if the queue is empty). An event's updates: ceil(channels / P), times its valid kernel offsets when
  the layer updates one offset per cycle.
- FIRE(l): address a is read on S + a and its record appears on S + a + 1; the next phase starts on
  S + words + 2.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qpsnn.hw.geometry import ENCODER_LATENCY, PARALLEL_OFFSETS, Geometry, LayerGeometry
from qpsnn.sw.golden import GoldenResult


@dataclass
class SampleTiming:
    total: int
    fire_start: dict = field(default_factory=dict)  # (layer, t) -> first cycle of FIRE(layer) at t, layers >= 1
    encode_issue: int = 0  # first issue cycle of the encoder's group 0
    encode_group_cycles: int = 0  # issue + overhead cycles of one encoder group
    encode_neuron_cycles: int = 1  # issue cycles of one first-layer neuron
    encode_positions: int = 1  # neurons of one encoder group
    events: int = 0  # spike events processed by layers >= 1 (every timestep)
    bound: int = 0

    def record_cycle(self, layer: int, t: int, address: int) -> int:
        if layer == 0:
            group, local = divmod(address, self.encode_positions)
            last_issue = (self.encode_issue + group * self.encode_group_cycles
                          + (local + 1) * self.encode_neuron_cycles - 1)
            return last_issue + ENCODER_LATENCY + t
        return self.fire_start[(layer, t)] + address + 1


def _offsets_map(lg: LayerGeometry) -> np.ndarray:
    """Valid kernel offsets for an event at each (y, x) of the layer's input map."""
    if lg.kind != "conv":
        return np.ones((lg.in_height, lg.in_width), dtype=np.int64)
    return np.array([[lg.valid_offsets(y, x) for x in range(lg.width)] for y in range(lg.height)], dtype=np.int64)


def input_pixels(geo: Geometry) -> int:
    c, h, w = geo.in_shape
    return c * h * w


def _ceil_div(a, b):
    return -(-a // b)


def encode_cycles(geo: Geometry) -> tuple[int, int, int]:
    """(issue cycles of one neuron, cycles of one group, cycles of the whole ENCODE phase)."""
    lg = geo.layers[0]
    neuron = lg.in_channels * (PARALLEL_OFFSETS // lg.weight_memories)
    group = lg.lanes + 1 + lg.positions * neuron + geo.timesteps + 3
    return neuron, group, 1 + lg.groups * group + 1


def sample_timing(geo: Geometry, spike_maps: list[np.ndarray]) -> SampleTiming:
    """``spike_maps[l]``: bool [T, *neuron_shape] spikes of layer l for this sample (golden trace)."""
    layers, P, T = geo.layers, geo.lanes, geo.timesteps
    first = layers[0]
    n_pix = input_pixels(geo)
    neuron, group, encode = encode_cycles(geo)
    start = n_pix + 1
    timing = SampleTiming(total=0, encode_issue=start + 1 + first.lanes + 1, encode_group_cycles=group,
                          encode_neuron_cycles=neuron,
                          encode_positions=first.positions)
    cycle = start + encode
    bound = n_pix + first.groups * first.positions * neuron
    events = 0
    for t in range(T):
        for i, lg in enumerate(layers[1:], start=1):
            prev = layers[i - 1]
            s = spike_maps[i - 1][t]
            if prev.pool > 1:
                c, h, w = s.shape
                s = s[:, :h - h % 2, :w - w % 2].reshape(c, h // 2, 2, w // 2, 2).any(axis=(2, 4))
            offsets = _offsets_map(lg)[None] if s.ndim == 3 else np.ones(s.shape, dtype=np.int64)
            per_event = lg.groups * (1 if lg.interleaved else offsets)
            n_ev = int(s.sum())
            events += n_ev
            if n_ev:
                upd = int((s * per_event).sum())
                cycle += upd + 3
                lanes_at_once = P * (PARALLEL_OFFSETS if lg.interleaved else 1)
                bound += int((s * _ceil_div(offsets * lg.channels, lanes_at_once)).sum())
            else:
                cycle += 1
            timing.fire_start[(i, t)] = cycle
            cycle += lg.neuron_words + 2
            bound += _ceil_div(lg.channels * lg.positions, P)
    timing.total, timing.events, timing.bound = cycle, events, bound
    return timing


def timings_for(geo: Geometry, golden: GoldenResult) -> list[SampleTiming]:
    """Timing of every sample from a golden run with ``trace=True``."""
    out = []
    for n in range(len(golden.classes)):
        maps = [tr.spikes[:, n].numpy() for tr in golden.trace]
        out.append(sample_timing(geo, maps))
    return out
