"""Per-neuron-channel parameters of a layer (thresholds and biases), P lanes packed in one word per group,
and the small arithmetic helpers the datapaths share."""
from __future__ import annotations

from dataclasses import dataclass

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from qpsnn.sw.protocol import REGION_BIAS, REGION_THRESHOLD

from .memory_plan import SHALLOW_WORDS, in_logic
from .records import ADDR_BITS


# A register copied to split its fanout carries this in its name; `KEEP_COPIES`, run by the ECP5 kernel-parallel
# flow after reading the design, marks each copy's flip-flop keep so that yosys's opt_merge leaves them apart.
FANOUT_COPY = "fanout_copy"
KEEP_COPIES = f"setattr -set keep 1 w:*{FANOUT_COPY}* %ci:+$dff[Q] c:* %i"


def ubits(n: int) -> int:
    """Bits of an unsigned index below n (at least 1)."""
    return max(1, (max(n, 1) - 1).bit_length())


def cmul(value, constant: int):
    """``value * constant`` as shifts and adds: an address computation must not take a DSP block (yosys maps
    a multiplication by a constant to one, and the encoder needs the DSPs)."""
    terms = [value << k for k in range(constant.bit_length()) if (constant >> k) & 1]
    return sum(terms[1:], terms[0]) if terms else Const(0, 1)


def saturate(value, bits: int):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return Mux(value > hi, hi, Mux(value < lo, lo, value))


def load_lane_params(m, param_lane, lanes: int, value_bits: int, theta, bias, r_theta, r_bias, then: str):
    """One cycle of an FSM state that loads a group's parameters lane by lane (read latency 1), each value
    shifted in from the top; after ``lanes`` + 1 cycles the registers hold the group and the FSM goes to
    ``then``."""
    V = value_bits
    m.d.sync += param_lane.eq(param_lane + 1)
    with m.If(param_lane != 0):
        m.d.sync += [theta.eq(Cat(theta.as_value()[V:], r_theta)), bias.eq(Cat(bias.as_value()[V:], r_bias))]
    with m.If(param_lane == lanes):
        m.d.sync += param_lane.eq(0)
        m.next = then


def step_window_major(m, w, px, py, window: int, width: int, height: int):
    """The next neuron of an output-stationary, window-major walk: the slot in the pool window, then x, then y
    of the pooled map; every counter wraps."""
    with m.If(w != window - 1):
        m.d.sync += w.eq(w + 1)
    with m.Else():
        m.d.sync += w.eq(0)
        with m.If(px != width - 1):
            m.d.sync += px.eq(px + 1)
        with m.Else():
            m.d.sync += px.eq(0)
            with m.If(py != height - 1):
                m.d.sync += py.eq(py + 1)
            with m.Else():
                m.d.sync += py.eq(0)


def emit_neuron(m, t: int, valid, tag, lanes, v, spikes, record, spike_valid, entry):
    """A neuron's timestep t leaves an output-stationary pass: its trace ``record`` (P lanes of membrane and
    spike), and at the end of its pool window (``tag.eow``) the window's OR-pooled spikes as one queue
    ``entry`` of the next layer (``spike_valid`` when any spiked)."""
    P = len(spikes)
    m.d.comb += [record.valid.eq(valid), record.t.eq(t), record.addr.eq(tag.addr), record.lanes.eq(lanes),
                 record.spikes.eq(spikes)] + [record.v[j].eq(v[j]) for j in range(P)]
    window = Signal(P, name=f"window{t}")
    mask = window | spikes
    with m.If(valid):
        m.d.sync += window.eq(Mux(tag.eow, 0, mask))
    m.d.comb += [spike_valid.eq(valid & tag.eow & (mask != 0)), entry.group.eq(tag.grp), entry.y.eq(tag.py),
                 entry.x.eq(tag.px), entry.mask.eq(mask)]


def drain_and_done_states(m, busy, grp, groups: int, run_en, run_done, then: str = "PARAMS"):
    """The last two states of an output-stationary pass: DRAIN waits for the pipeline, then the next group's
    first state (``then``) or, after the last group, DONE, which holds ``run_done`` until the sequencer drops
    ``run_en``."""
    with m.State("DRAIN"):
        with m.If(~busy):
            with m.If(grp == groups - 1):
                m.next = "DONE"
            with m.Else():
                m.d.sync += grp.eq(grp + 1)
                m.next = then
    with m.State("DONE"):
        m.d.comb += run_done.eq(1)
        with m.If(~run_en):
            m.next = "IDLE"


@dataclass(frozen=True)
class Placement:
    """Where a board puts the accelerator's memories: one object from the board, passed down once.

    ``weights_in_spram``: big weight stores in SPRAM (iCE40 UP); ``small_in_bram``: memories of a few hundred
    bits in block RAM too (blocks to spare, logic scarce); ``membranes``: the ram_style of the interleaved
    membrane banks (``"distributed"``: LUT RAM, the ECP5's kernel-parallel flow); ``image_in_spram``: the serial
    encoder's image in an SPRAM (loaded, then read: one port is enough), two block RAMs freed."""
    weights_in_spram: bool = False
    small_in_bram: bool = False
    membranes: str | None = None
    image_in_spram: bool = False


def packed_memory(width: int, depth: int, shape=None, small_in_bram: bool = False,
                  style: str | None = None) -> Memory:
    """A memory that stays in flip-flops when a block RAM would hold only a handful of bits, unless the board
    has blocks to spare and logic to save (``small_in_bram``, the iCE40 UP5K): then it takes a block anyway.
    ``style``: the ram_style of a bigger one (``"distributed"``: LUT RAM) where the board's flow says so."""
    depth = max(2, depth)
    attrs = {"ram_style": style} if style else None
    if in_logic(width, depth):
        attrs = {"ram_style": "block" if small_in_bram and depth > SHALLOW_WORDS else "logic"}
    return Memory(shape=shape if shape is not None else unsigned(width), depth=depth, init=[], attrs=attrs)


class LaneParams(wiring.Component):
    """Thresholds (firing layers only) and biases, written and read back per channel.

    ``per_channel=False``: P lanes packed in one word per group, read per group with one cycle of latency (a
    fire scan needs every lane each cycle). ``per_channel=True``: one channel per word, read one at a time
    (the encoder loads a group's P lanes into registers once per group: a P:1 narrow read, not P wide ones).
    """

    def __init__(self, lanes: int, value_bits: int, groups: int, fires: bool = True, per_channel: bool = False,
                 small_in_bram: bool = False):
        self.lanes, self.value_bits, self.groups, self.fires = lanes, value_bits, groups, fires
        self.per_channel, self.small_in_bram = per_channel, small_in_bram
        out = signed(value_bits) if per_channel else data.ArrayLayout(signed(value_bits), lanes)
        depth = groups * lanes if per_channel else groups
        super().__init__({
            "cfg_en": In(1), "cfg_region": In(2), "cfg_addr": In(ADDR_BITS), "cfg_data": In(value_bits),
            "cfg_rd": In(1), "cfg_rd_data": Out(value_bits),
            "r_addr": In(range(max(depth, 2))), "r_theta": Out(out), "r_bias": Out(out),
        })

    def elaborate(self, platform):
        m = Module()
        P, V = self.lanes, self.value_bits
        packed = not self.per_channel and P > 1
        lane_bits = ubits(P) if packed else 0
        lane = self.cfg_addr[:lane_bits] if packed else 0
        entry = self.cfg_addr[lane_bits:]
        regions = {REGION_BIAS: self.r_bias}
        if self.fires:
            regions[REGION_THRESHOLD] = self.r_theta
        rd_lane = Signal(max(1, lane_bits))
        rd_region = Signal(2)
        m.d.sync += [rd_lane.eq(lane), rd_region.eq(self.cfg_region)]
        lanes = P if packed else 1
        for region, out in regions.items():
            mem = packed_memory(lanes * V, self.groups * (P // lanes), small_in_bram=self.small_in_bram)
            m.submodules[f"region{region}"] = mem
            wp = mem.write_port(granularity=V)
            rp = mem.read_port()
            m.d.comb += [wp.addr.eq(entry), wp.data.eq(self.cfg_data[:V].replicate(lanes)),
                         wp.en.eq(Mux(self.cfg_en & (self.cfg_region == region), 1 << lane, 0)),
                         rp.addr.eq(Mux(self.cfg_rd, entry, self.r_addr)), out.eq(rp.data)]
            with m.If(rd_region == region):
                words = Array(rp.data[j * V:(j + 1) * V] for j in range(lanes))
                m.d.comb += self.cfg_rd_data.eq(words[rd_lane] if lanes > 1 else rp.data)
        return m
