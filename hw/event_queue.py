"""The spike event queue of one layer: FIFOs of (group, y, x, P-bit mask) entries, read out one event at a
time. An entry is what the previous layer emits for one (pooled) position: up to P spiking channels at once.
The decoder hands out the lowest set bit first and moves to the next entry without a bubble, so one event
leaves per cycle when the consumer is ready.

A queue has one *region* (FIFO) per timestep it must hold at once: the encoder emits a neuron's spikes for
every timestep together, so the layer after it keeps T regions and drains region t in timestep t; layers
fed by a fire scan need one.
"""
from __future__ import annotations

from amaranth import Array, Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, fifo, wiring
from amaranth.lib.wiring import In, Out


def entry_layout(lanes: int, group_bits: int, y_bits: int, x_bits: int) -> data.StructLayout:
    return data.StructLayout({"group": unsigned(group_bits), "y": unsigned(y_bits), "x": unsigned(x_bits),
                              "mask": unsigned(lanes)})


def event_layout(channel_bits: int, y_bits: int, x_bits: int) -> data.StructLayout:
    return data.StructLayout({"channel": unsigned(channel_bits), "y": unsigned(y_bits), "x": unsigned(x_bits)})


class EventQueue(wiring.Component):
    """``w_valid[r]`` / ``w_data[r]``: push one entry into region r (never full by construction: depth =
    positions x groups of the producer). ``ev_*``: the decoded events of region ``region``, valid/ready.
    ``empty``: region ``region`` has no entry stored and none being decoded."""

    def __init__(self, lanes: int, groups: int, y_bits: int, x_bits: int, depth: int, regions: int = 1):
        # +1: the buffered FIFO takes a cycle to move its first entry to the output register
        self.lanes, self.depth, self.regions = lanes, max(depth + 1, 3), regions
        self._entry = entry_layout(lanes, max(1, (groups - 1).bit_length()), y_bits, x_bits)
        channel_bits = max(1, (groups * lanes - 1).bit_length())
        self._event = event_layout(channel_bits, y_bits, x_bits)
        super().__init__({
            "w_valid": In(regions), "w_data": In(data.ArrayLayout(self._entry, regions)),
            "region": In(range(max(regions, 2))),
            "ev_valid": Out(1), "ev_ready": In(1), "ev": Out(self._event),
            "empty": Out(1), "overflow": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        P = self.lanes
        heads, head_valid = [], []
        for r in range(self.regions):
            q = fifo.SyncFIFOBuffered(width=self._entry.size, depth=self.depth)
            m.submodules[f"fifo{r}"] = q
            m.d.comb += [q.w_stream.payload.eq(self.w_data[r].as_value()), q.w_stream.valid.eq(self.w_valid[r])]
            m.d.sync += self.overflow.eq(self.overflow | (self.w_valid[r] & ~q.w_stream.ready))
            heads.append(q)
        r_valid = Array(q.r_stream.valid for q in heads)[self.region] if self.regions > 1 else heads[0].r_stream.valid
        r_payload = Array(q.r_stream.payload for q in heads)[self.region] if self.regions > 1 else heads[0].r_stream.payload

        cur = Signal(self._entry)
        cur_mask = Signal(P)
        head = self._entry(r_payload)
        use_cur = cur_mask != 0
        src = Signal(self._entry)
        m.d.comb += src.eq(Mux(use_cur, cur, head))
        mask = Mux(use_cur, cur_mask, head.mask)
        low = Signal(P)
        m.d.comb += low.eq(mask & (~mask + 1))  # lowest set bit
        lane = Signal(range(P))
        for j in reversed(range(P)):
            with m.If(mask[j]):
                m.d.comb += lane.eq(j)
        m.d.comb += [
            self.ev_valid.eq(use_cur | r_valid),
            self.ev.channel.eq(Cat(lane, src.group) if P > 1 else src.group),
            self.ev.y.eq(src.y), self.ev.x.eq(src.x),
            self.empty.eq(~use_cur & ~r_valid),
        ]
        with m.If(self.ev_valid & self.ev_ready):
            with m.If(use_cur):
                m.d.sync += cur_mask.eq(cur_mask & ~low)
            with m.Else():
                for r, q in enumerate(heads):
                    m.d.comb += q.r_stream.ready.eq(1 if self.regions == 1 else self.region == r)
                m.d.sync += [cur.eq(head), cur_mask.eq(head.mask & ~low)]
        return m
