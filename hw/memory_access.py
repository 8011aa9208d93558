"""WRITE and READ of the accelerator's memories: a request's payload words into the configuration port,
or words read back out of it as a reply body.

A write is checked whole before its first word lands (a whole number of words, all inside the region), so
a refused WRITE changes nothing. Words are counted by subtraction: no divider for a word size that is not
a power of two.
"""
from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from qpsnn.sw import protocol as proto

from .records import ADDR_BITS

# what the dispatcher asks for: ``count`` words to read, or the words in ``payload_bytes`` to write
AccessRequest = data.StructLayout({"read": 1, "layer": unsigned(4), "region": proto.Region,
                                   "addr": unsigned(ADDR_BITS), "count": unsigned(16), "payload_bytes": unsigned(16)})
# its answer: a status, and for an OK read the reply body's length (the body then streams from ``read_data``)
AccessDone = data.StructLayout({"status": proto.Status, "length": unsigned(16)})


def config_signature(data_bits: int) -> wiring.Signature:
    """The accelerator's configuration port, seen from the side that drives it."""
    return wiring.Signature({"en": Out(1), "layer": Out(4), "region": Out(proto.Region), "addr": Out(ADDR_BITS),
                             "data": Out(data_bits), "rd": Out(1), "rd_data": In(data_bits)})


class MemoryAccess(wiring.Component):
    """``sizes[layer][region]``: words in each memory (0: none). ``word_bytes``: bytes per word on the wire."""

    def __init__(self, sizes: list[list[int]], word_bytes: int, data_bits: int):
        self.sizes, self.word_bytes = sizes, word_bytes
        super().__init__({"request": In(stream.Signature(AccessRequest)), "done": Out(stream.Signature(AccessDone)),
                          "write_data": In(stream.Signature(8)), "read_data": Out(stream.Signature(8)),
                          "cfg": Out(config_signature(data_bits))})

    def elaborate(self, platform):
        m = Module()
        D, regions = self.word_bytes, len(proto.Region)
        req = Signal(AccessRequest)  # the request taken, held while it is served
        sizes = Array(Const(s, ADDR_BITS + 1) for per_layer in self.sizes for s in [*per_layer, 0])
        size = sizes[req.layer * (regions + 1) + req.region]
        count, rem = Signal(16), Signal(16)
        word = Signal(8 * D)
        k = Signal(range(D + 1))
        m.d.comb += [self.cfg.layer.eq(req.layer), self.cfg.region.eq(req.region), self.cfg.addr.eq(req.addr),
                     self.cfg.data.eq(word), self.read_data.payload.eq(word[:8])]

        def answer(status, length=0, then="IDLE"):
            m.d.comb += [self.done.valid.eq(1), self.done.payload.status.eq(status), self.done.payload.length.eq(length)]
            with m.If(self.done.ready):
                m.next = then

        with m.FSM(name="access"):
            with m.State("IDLE"):
                m.d.comb += self.request.ready.eq(1)
                m.d.sync += [req.eq(self.request.payload), count.eq(0), rem.eq(self.request.payload.payload_bytes),
                             k.eq(0)]
                with m.If(self.request.valid):
                    with m.If(self.request.payload.read):
                        m.d.sync += count.eq(self.request.payload.count)
                        m.next = "CHECK"
                    with m.Else():
                        m.next = "COUNT"
            with m.State("COUNT"):  # count = payload_bytes / D, with nothing left over
                with m.If(rem >= D):
                    m.d.sync += [rem.eq(rem - D), count.eq(count + 1)]
                with m.Elif(rem != 0):
                    answer(proto.E_LENGTH)
                with m.Else():
                    m.next = "CHECK"
            with m.State("CHECK"):
                with m.If(req.addr + count > size):
                    answer(proto.E_RANGE)
                with m.Elif(req.read):
                    answer(proto.OK, count * D, then="FETCH")
                with m.Else():
                    m.next = "TAKE"
            # ---- write: D bytes into a word, then one configuration write
            with m.State("TAKE"):
                m.d.comb += self.write_data.ready.eq(1)
                with m.If(self.write_data.valid):
                    m.d.sync += [word.eq(Cat(word[8:], self.write_data.payload)), k.eq(k + 1)]
                    with m.If(k == D - 1):
                        m.next = "COMMIT"
            with m.State("COMMIT"):
                m.d.comb += self.cfg.en.eq(1)
                m.d.sync += [req.addr.eq(req.addr + 1), count.eq(count - 1), k.eq(0)]
                with m.If(count == 1):
                    m.next = "WRITTEN"
                with m.Else():
                    m.next = "TAKE"
            with m.State("WRITTEN"):
                answer(proto.OK)
            # ---- read: one configuration read per word, its D bytes out low byte first
            with m.State("FETCH"):
                with m.If(count == 0):
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += self.cfg.rd.eq(1)
                    m.next = "LATCH"
            with m.State("LATCH"):
                m.d.sync += [word.eq(self.cfg.rd_data), req.addr.eq(req.addr + 1), count.eq(count - 1), k.eq(0)]
                m.next = "SEND"
            with m.State("SEND"):
                m.d.comb += self.read_data.valid.eq(1)
                with m.If(self.read_data.ready):
                    m.d.sync += [word.eq(word >> 8), k.eq(k + 1)]
                    with m.If(k == D - 1):
                        m.next = "FETCH"
        return m
