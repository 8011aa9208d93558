"""Cycle model of the accelerator: for a model and a sample, on which cycle each fire-scan record appears and
how many cycles the sample takes; and the lower bound of the design notes to measure against.

The sequencer's timing, cycle 0 being the first cycle of the IN phase:
- IN: the first event is taken on cycle 0, its updates issue from cycle 1 with no bubble between events
  (N updates in all), the last write lands on N+1 and the next phase starts on N+3 (2 for a blank image);
- EV(l): same shape on the layer's queue: N updates start one cycle in, next phase after N+3 (1 if empty);
- FIRE(l): address a is read on S+a and its record appears on S+a+1; the next phase starts on S+words+2.
One event's updates are its valid kernel offsets times ceil(channels / P) (fully connected: one offset).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


from qpsnn.hw.geometry import Geometry, LayerGeometry
from qpsnn.sw.golden import GoldenResult


@dataclass
class SampleTiming:
    total: int
    fire_start: dict = field(default_factory=dict)  # (layer, t) -> first cycle of FIRE(layer) at t
    events: int = 0  # events processed (input bit-plane events once, spike events per timestep)
    bound: int = 0

    def record_cycle(self, layer: int, t: int, address: int) -> int:
        return self.fire_start[(layer, t)] + address + 1


def _offsets_map(lg: LayerGeometry) -> np.ndarray:
    """Valid kernel offsets for an event at each (y, x) of the layer's input map."""
    if lg.kind != "conv":
        return np.ones((lg.in_height, lg.in_width), dtype=np.int64)
    return np.array([[lg.valid_offsets(y, x) for x in range(lg.width)] for y in range(lg.height)], dtype=np.int64)


def input_events(image: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Bit-plane events (channel, y, x, plane) in the order the bench and the driver send them."""
    c, y, x = np.nonzero(image)
    events = []
    for ci, yi, xi in zip(c.tolist(), y.tolist(), x.tolist()):
        value = int(image[ci, yi, xi])
        events.extend((ci, yi, xi, k) for k in range(8) if (value >> k) & 1)
    return events


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def sample_timing(geo: Geometry, image: np.ndarray, spike_maps: list[np.ndarray]) -> SampleTiming:
    """``spike_maps[l]``: bool [T, *neuron_shape] spikes of layer l for this sample (golden trace)."""
    layers = geo.layers
    P = geo.lanes
    first = layers[0]
    offsets0 = _offsets_map(first)
    planes = np.unpackbits(image.astype(np.uint8)[..., None], axis=-1).sum(-1)  # set bits per pixel
    updates = int((planes * offsets0[None]).sum()) * first.groups
    n_input = int(planes.sum())
    events = n_input
    bound = sum(_ceil_div(int(o) * first.channels, P) * int(n) for o, n in zip(offsets0.ravel(), planes.sum(0).ravel()))
    cycle = 2 if n_input == 0 else updates + 3
    timing = SampleTiming(total=0)
    for t in range(geo.timesteps):
        for i, lg in enumerate(layers):
            if i:
                prev = layers[i - 1]
                s = spike_maps[i - 1][t]
                if prev.pool > 1:
                    c, h, w = s.shape
                    s = s[:, :h - h % 2, :w - w % 2].reshape(c, h // 2, 2, w // 2, 2).any(axis=(2, 4))
                if lg.kind == "conv":
                    per_event = _offsets_map(lg)[None] * lg.groups
                    fan = _offsets_map(lg)[None] * lg.channels
                else:
                    per_event = np.full(s.shape, lg.groups)
                    fan = np.full(s.shape, lg.channels)
                n_ev = int(s.sum())
                upd = int((s * per_event).sum())
                events += n_ev
                bound += int((s * np.vectorize(lambda f: _ceil_div(int(f), P))(fan)).sum()) if n_ev else 0
                cycle += upd + 3 if n_ev else 1
            timing.fire_start[(i, t)] = cycle
            cycle += lg.neuron_words + 2
            bound += _ceil_div(lg.channels * lg.positions, P)
    timing.total, timing.events, timing.bound = cycle, events, bound
    return timing


def timings_for(geo: Geometry, images: np.ndarray, golden: GoldenResult) -> list[SampleTiming]:
    """Timing of every sample from a golden run with ``trace=True``."""
    out = []
    for n in range(len(images)):
        maps = [tr.spikes[:, n].numpy() for tr in golden.trace]
        out.append(sample_timing(geo, np.asarray(images[n]), maps))
    return out


def lower_bound(geo: Geometry, image: np.ndarray, spike_maps: list[np.ndarray]) -> int:
    return sample_timing(geo, image, spike_maps).bound


