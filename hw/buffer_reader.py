"""Streams a received frame's payload out of the frame buffer, one byte per cycle.

The buffer is one block RAM with one read port; this is its only reader, so the dispatcher (the command
header), the memory access (WRITE's words) and the pixel feeder (RUN's pixels) all take the payload as a
stream in turn instead of sharing an address mux.
"""
from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2


class BufferReader(wiring.Component):
    """``start`` (one cycle) restarts at byte 0 of a payload of ``length`` bytes; ``bytes`` then offers them
    in order. ``port``: the frame buffer's read port (one cycle of latency, always enabled)."""

    def __init__(self, max_payload: int):
        super().__init__({"start": In(1), "length": In(16), "bytes": Out(stream.Signature(8)),
                          "port": In(ReadPort.Signature(addr_width=ceil_log2(max_payload), shape=8))})

    def elaborate(self, platform):
        m = Module()
        pointer = Signal(16)  # the port's data is the byte at ``pointer`` once ``primed``
        primed = Signal()
        taken = self.bytes.valid & self.bytes.ready
        m.d.comb += [self.port.en.eq(1), self.port.addr.eq(Mux(self.start, 0, Mux(taken, pointer + 1, pointer))),
                     self.bytes.payload.eq(self.port.data), self.bytes.valid.eq(primed & (pointer < self.length))]
        with m.If(self.start):
            m.d.sync += [pointer.eq(0), primed.eq(1)]
        with m.Elif(taken):
            m.d.sync += pointer.eq(pointer + 1)
        return m
