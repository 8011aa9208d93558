"""The spike event queue of one layer: a FIFO of (group, y, x, P-bit mask) entries, read out one event at a
time. An entry is what the previous layer's fire scan emits for one (pooled) position: up to P spiking
channels at once. The decoder hands out the lowest set bit first and moves to the next entry without a
bubble, so one event leaves per cycle when the consumer is ready.
"""
from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, fifo, wiring
from amaranth.lib.wiring import In, Out


def entry_layout(lanes: int, group_bits: int, y_bits: int, x_bits: int) -> data.StructLayout:
    return data.StructLayout({"group": unsigned(group_bits), "y": unsigned(y_bits), "x": unsigned(x_bits),
                              "mask": unsigned(lanes)})


def event_layout(channel_bits: int, y_bits: int, x_bits: int) -> data.StructLayout:
    return data.StructLayout({"channel": unsigned(channel_bits), "y": unsigned(y_bits), "x": unsigned(x_bits)})


class EventQueue(wiring.Component):
    """``w_*``: push one entry (never full by construction: depth = positions x groups of the producer).
    ``ev_*``: the decoded events, valid/ready. ``empty``: no entry stored and none being decoded."""

    def __init__(self, lanes: int, groups: int, y_bits: int, x_bits: int, depth: int):
        # +1: the buffered FIFO takes a cycle to move its first entry to the output register
        self.lanes, self.depth = lanes, max(depth + 1, 3)
        self._entry = entry_layout(lanes, max(1, (groups - 1).bit_length()), y_bits, x_bits)
        channel_bits = max(1, (groups * lanes - 1).bit_length())
        self._event = event_layout(channel_bits, y_bits, x_bits)
        super().__init__({
            "w_valid": In(1), "w_data": In(self._entry),
            "ev_valid": Out(1), "ev_ready": In(1), "ev": Out(self._event),
            "empty": Out(1), "overflow": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        P = self.lanes
        m.submodules.fifo = q = fifo.SyncFIFOBuffered(width=self._entry.size, depth=self.depth)
        m.d.comb += [q.w_stream.payload.eq(self.w_data.as_value()), q.w_stream.valid.eq(self.w_valid)]
        m.d.sync += self.overflow.eq(self.overflow | (self.w_valid & ~q.w_stream.ready))

        cur = Signal(self._entry)
        cur_mask = Signal(P)
        head = self._entry(q.r_stream.payload)
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
            self.ev_valid.eq(use_cur | q.r_stream.valid),
            self.ev.channel.eq(Cat(lane, src.group) if P > 1 else src.group),
            self.ev.y.eq(src.y), self.ev.x.eq(src.x),
            self.empty.eq(~use_cur & ~q.r_stream.valid),
        ]
        with m.If(self.ev_valid & self.ev_ready):
            with m.If(use_cur):
                m.d.sync += cur_mask.eq(cur_mask & ~low)
            with m.Else():
                m.d.comb += q.r_stream.ready.eq(1)
                m.d.sync += [cur.eq(head), cur_mask.eq(head.mask & ~low)]
        return m
