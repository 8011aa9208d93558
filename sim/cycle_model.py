"""Cycle model of the accelerator: for a model and a sample, on which cycle each trace record appears and how
many cycles the sample takes; and the lower bound to measure against (docs/DESIGN.md).

The sequencer's timing, cycle 0 being the first counted cycle of ENCODE (the cycle its first pixel is taken):
- ENCODE (`qpsnn.hw.encoder`): pixels come in one per cycle (C H W, raster order) while the encoder runs;
  kernel-parallel, the load and the first layer overlap. The encoder sees the run on cycle 0; per group of P
  channels, P + 1 cycles to read the thresholds and biases lane by lane, then one issue per (neuron, input
  channel, 9/taps offsets), each no earlier than the cycle after the last pixel its window needs is taken
  (`pixel_needed`; serial: after the last pixel of the image), then T + 3 cycles to drain the pipeline; one
  cycle after the last group. Record t of a neuron appears ``encoder.LATENCY + t`` cycles after its last
  issue. A cycle with no pixel to take while the image is incomplete is frozen and not counted, so the count
  does not depend on the link.
- UNROLL(l) (`qpsnn.hw.unrolled_layer`), after ENCODE: the encoder's schedule with nine issues per neuron,
  no pixel to wait for and no parameter cycles (its LIF reads them step by step), from the cycle the
  sequencer enters it; its LIF takes S = `lif_steps` (P, T) steps per timestep, so T S + 3 cycles drain a
  group, and record t appears ``LATENCY + (t + 1) S - 1`` cycles after a neuron's last issue.
- EV(l): one update per cycle, starting one cycle in (N updates in all), the next phase starts on N + 3
  (1 if the queue is empty). An event's updates: ceil(channels / P), times its valid kernel offsets when
  the layer updates one offset per cycle.
- FIRE(l): address a is read on S + a and its record appears on S + a + 1; the next phase starts on
  S + words + 2.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qpsnn.hw.geometry import ENCODER_LATENCY, PARALLEL_OFFSETS, Geometry, LayerGeometry, lif_steps
from qpsnn.sw.golden import GoldenResult


@dataclass
class SampleTiming:
    total: int
    fire_start: dict = field(default_factory=dict)  # (layer, t) -> first cycle of FIRE(layer) at t, layers >= 1
    encode_last_issue: np.ndarray | None = None  # first-layer neuron address -> cycle of its last issue
    events: int = 0  # spike events processed by event-driven layers (every timestep)
    bound: int = 0
    unrolled_last_issue: dict = field(default_factory=dict)  # unrolled layer -> neuron address -> last issue
    unrolled_steps: dict = field(default_factory=dict)  # unrolled layer -> its LIF's steps per timestep

    def record_cycle(self, layer: int, t: int, address: int) -> int:
        if layer == 0:
            return int(self.encode_last_issue[address]) + ENCODER_LATENCY + t
        if layer in self.unrolled_last_issue:
            steps = self.unrolled_steps[layer]
            return int(self.unrolled_last_issue[layer][address]) + ENCODER_LATENCY + (t + 1) * steps - 1
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


def pixel_needed(lg: LayerGeometry, c, y, x):
    """Raster index of the last pixel (input channel c) that the 3x3 window of first-layer neuron (y, x)
    reads: the encoder may issue it once that pixel is in (`qpsnn.hw.encoder`, the same formula)."""
    H, W = lg.height, lg.width
    return (c * H + np.minimum(y + 1, H - 1)) * W + np.minimum(x + 1, W - 1)


@dataclass(frozen=True)
class EncodeSchedule:
    last_issue: np.ndarray  # neuron address -> cycle of its last issue
    end: int  # first cycle after ENCODE (EV of layer 1)
    issues: int  # issue cycles in all (the encoder's share of the bound)


def _issue_schedule(lg: LayerGeometry, steps: int, need: np.ndarray, start: int, params: int) -> EncodeSchedule:
    """An output-stationary pass (the encoder's, an unrolled layer's) that sees its run on cycle ``start``:
    per group, ``params`` cycles of parameters, one issue per entry of ``need[position]`` (each no earlier
    than the cycle after that raster index of the image is taken), ``steps`` (its LIF's) + 3 cycles to drain;
    one cycle after the last group, then the sequencer moves on."""
    last = np.zeros(lg.neuron_words, dtype=np.int64)
    cycle = start + 1 + params  # IDLE, then PARAMS
    for grp in range(lg.groups):
        for pos in range(lg.positions):
            for n in need[pos]:
                cycle = max(cycle, int(n) + 1)
                cycle += 1
            last[grp * lg.positions + pos] = cycle - 1
        cycle += steps + 3 + params  # DRAIN, then the next group's PARAMS
    end = int(last[-1]) + steps + 5  # DRAIN, DONE, then the sequencer moves on
    return EncodeSchedule(last, end, lg.groups * lg.positions * need.shape[1])


def encode_schedule(geo: Geometry) -> EncodeSchedule:
    """The encoder's issue cycles, the same for every sample (they wait on pixels, never on data)."""
    lg, T = geo.layers[0], geo.timesteps
    per_channel = PARALLEL_OFFSETS // lg.weight_memories
    order = np.array([lg.neuron_at(a, 0)[1:] for a in range(lg.positions)], dtype=np.int64)  # window-major (y, x)
    need = pixel_needed(lg, np.arange(lg.in_channels)[None, :], order[:, :1], order[:, 1:])  # [position, c]
    if not lg.overlaps_load:  # serial: nothing before the whole image
        need = np.full_like(need, input_pixels(geo) - 1)
    return _issue_schedule(lg, T, np.repeat(need, per_channel, axis=1), 0, lg.lanes + 1)


def unrolled_schedules(geo: Geometry, start: int) -> dict[int, EncodeSchedule]:
    """Each unrolled layer's issue cycles (nine kernel offsets per neuron, all input channels at once), the
    first run from cycle ``start`` (the end of ENCODE), each next one from the end of the one before: the
    same for every sample."""
    out = {}
    for i, lg in enumerate(geo.layers):
        if lg.unrolled:
            need = np.full((lg.positions, PARALLEL_OFFSETS), -1, dtype=np.int64)
            out[i] = _issue_schedule(lg, geo.timesteps * lif_steps(lg.lanes, geo.timesteps), need, start, 0)
            start = out[i].end
    return out


def sample_timing(geo: Geometry, spike_maps: list[np.ndarray], schedule: EncodeSchedule | None = None,
                  unrolled: dict[int, EncodeSchedule] | None = None) -> SampleTiming:
    """``spike_maps[l]``: bool [T, *neuron_shape] spikes of layer l for this sample (golden trace);
    ``schedule`` and ``unrolled``: the sample-independent passes, when the caller has them already."""
    layers, P, T = geo.layers, geo.lanes, geo.timesteps
    schedule = schedule or encode_schedule(geo)
    unrolled = unrolled if unrolled is not None else unrolled_schedules(geo, schedule.end)
    timing = SampleTiming(total=0, encode_last_issue=schedule.last_issue)
    cycle = schedule.end
    n_pix = input_pixels(geo)
    bound = max(n_pix, schedule.issues) if layers[0].overlaps_load else n_pix + schedule.issues
    for i, pass_ in unrolled.items():  # UNROLL(l): after ENCODE, once per sample
        timing.unrolled_last_issue[i] = pass_.last_issue
        timing.unrolled_steps[i] = lif_steps(layers[i].lanes, T)
        cycle, bound = pass_.end, bound + pass_.issues
    events = 0
    for t in range(T):
        for i, lg in enumerate(layers[1:], start=1):
            if lg.unrolled:
                continue
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
    out, schedule = [], encode_schedule(geo)
    unrolled = unrolled_schedules(geo, schedule.end)
    for n in range(len(golden.classes)):
        maps = [tr.spikes[:, n].numpy() for tr in golden.trace]
        out.append(sample_timing(geo, maps, schedule, unrolled))
    return out
