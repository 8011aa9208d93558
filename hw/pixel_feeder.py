"""RUN's pixels into the accelerator, and the sample's result back out as a reply body.

A sample arrives in chunks (RUN frames, each at a pixel offset); ``position`` counts the pixels of the open
sample so far, so the dispatcher can refuse a chunk at the wrong offset. When the last pixel is in, the
feeder waits for the accelerator's result and keeps it (class, cycles, every potential, in the byte order
of `qpsnn.sw.protocol.RESULT_FIELDS`) for the reply and for a later RESULT.
"""
from __future__ import annotations

from amaranth import Array, Cat, Module, Mux, Signal, unsigned
from amaranth.utils import ceil_log2
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from qpsnn.sw import protocol as proto

from .records import result_layout

# what the feeder says when a chunk is in: whether it completed the sample (then the result is ready)
ChunkDone = data.StructLayout({"sample_done": 1})


class PixelFeeder(wiring.Component):
    """``chunk``: pixels to take from ``data`` (a count); ``pixels``: into the accelerator; ``result``: from
    it (its class and potentials held by the accelerator until the next sample); ``body``: the result's bytes,
    from the first after each ``restart``. RESET resets it (a `ResetInserter`), which forgets the open sample
    and the kept result.

    ``rotate``: the accelerator's potentials move one class down (class k + 1 to k, class 0 to the last), so
    the body reads only ``potentials[0]``: a byte multiplexer over every potential would cost more logic
    than the rest of the host link. The feeder counts the rotations and rotates while the front class is not
    the one the body needs, a bubble per potential; a body sent whole leaves them back in class order, and
    one cut short is put back in order before the next. (Each sample's last scan writes every potential, so
    none can be left out of place.)"""

    def __init__(self, pixels: int, classes: int, value_bits: int):
        self.n_pixels = pixels
        layout = result_layout(classes, value_bits)
        self.result_bytes = proto.RESULT_FIXED + proto.POTENTIAL_BITS // 8 * classes
        super().__init__({"chunk": In(stream.Signature(unsigned(16))), "done": Out(stream.Signature(ChunkDone)),
                          "data": In(stream.Signature(8)), "pixels": Out(stream.Signature(8)),
                          "result": In(stream.Signature(layout)), "body": Out(stream.Signature(8)),
                          "restart": In(1), "rotate": Out(1),
                          "position": Out(range(pixels + 1)), "have_result": Out(1)})

    def elaborate(self, platform):
        m = Module()
        left = Signal(16)
        res = self.result.payload
        # the accelerator holds its result's class and potentials until the next sample's last scan (a RUN
        # that starts one clears have_result first); only the cycle counter restarts, so only it is kept here
        cycles = Signal(res.cycles.shape())
        fixed = Cat(*(cycles if name == "cycles" else res[name] for name, _ in proto.RESULT_FIELDS))
        m.d.comb += self.pixels.payload.eq(self.data.payload)

        # the body: the fixed fields' bytes, then each potential's, sign-extended, from potentials[0], the
        # one the accelerator's rotation has brought to the front (`head`: its class)
        K, pb = len(res.potentials), proto.POTENTIAL_BITS // 8
        index = Signal(range(self.result_bytes + 1))
        head = Signal(range(K))
        offset = Signal(range(self.result_bytes + 1))
        m.d.comb += offset.eq(index - proto.RESULT_FIXED)
        in_pots = (index >= proto.RESULT_FIXED) & (index < self.result_bytes)
        wanted = Signal(range(K))  # the class whose byte is next (class 0 outside the potentials)
        m.d.comb += wanted.eq(Mux(in_pots, offset >> ceil_log2(pb), 0))
        value = res.potentials[0]
        extended = Cat(value, value[-1].replicate(proto.POTENTIAL_BITS - len(value)))
        m.d.comb += [self.rotate.eq(head != wanted),
                     self.body.valid.eq(~in_pots | (head == wanted)),
                     self.body.payload.eq(Mux(in_pots, extended.word_select(offset[:ceil_log2(pb)], 8),
                                              Array(fixed.word_select(i, 8) for i in range(proto.RESULT_FIXED))[index]))]
        with m.If(self.rotate):
            m.d.sync += head.eq(Mux(head == K - 1, 0, head + 1))
        with m.If(self.restart):
            m.d.sync += index.eq(0)
        with m.Elif(self.body.valid & self.body.ready):
            m.d.sync += index.eq(index + 1)

        with m.FSM(name="feed"):
            with m.State("IDLE"):
                m.d.comb += self.chunk.ready.eq(1)
                m.d.sync += left.eq(self.chunk.payload)
                with m.If(self.chunk.valid):
                    m.d.sync += self.have_result.eq(0)
                    m.next = "FEED"
            with m.State("FEED"):
                m.d.comb += [self.pixels.valid.eq(self.data.valid), self.data.ready.eq(self.pixels.ready)]
                with m.If(self.data.valid & self.pixels.ready):
                    m.d.sync += [self.position.eq(self.position + 1), left.eq(left - 1)]
                    with m.If(left == 1):
                        m.next = "CHUNK_IN"
            with m.State("CHUNK_IN"):
                with m.If(self.position == self.n_pixels):
                    m.next = "WAIT_RESULT"
                with m.Else():
                    m.d.comb += [self.done.valid.eq(1), self.done.payload.sample_done.eq(0)]
                    with m.If(self.done.ready):
                        m.next = "IDLE"
            with m.State("WAIT_RESULT"):
                m.d.comb += self.result.ready.eq(1)
                with m.If(self.result.valid):
                    m.d.sync += [cycles.eq(res.cycles), self.position.eq(0), self.have_result.eq(1)]
                    m.next = "SAMPLE_DONE"
            with m.State("SAMPLE_DONE"):
                m.d.comb += [self.done.valid.eq(1), self.done.payload.sample_done.eq(1)]
                with m.If(self.done.ready):
                    m.next = "IDLE"
        return m

