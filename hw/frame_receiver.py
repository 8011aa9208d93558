"""The first stage of the command processor: turns request bytes into whole, checked frames.

It hunts for the start byte, shifts in the header, stores the payload in the frame buffer and runs the
CRC, then offers the dispatcher one `ReceivedFrame` per request. A frame that stops arriving is cut after
``timeout_cycles`` without a byte (status E_TIMEOUT), so a client that leaves mid-frame cannot wedge the
link; a payload longer than the buffer is swallowed without being stored (E_LENGTH). Nothing downstream
acts on a frame whose status is not OK, so a corrupt, cut or oversized request never changes the device.
"""
from __future__ import annotations

from amaranth import Cat, Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.crc import Processor
from amaranth.lib.crc.catalog import CRC16_CCITT_FALSE
from amaranth.lib.memory import WritePort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from qpsnn.sw import protocol as proto

from .records import FrameHeader, ReceivedFrame


class FrameReceiver(wiring.Component):
    """``rx``: request bytes; ``frame``: one header and status per request, held until taken (the buffer
    is not written again before then); ``buf``: the frame buffer's write port."""

    def __init__(self, max_payload: int, timeout_cycles: int):
        self.max_payload, self.timeout_cycles = max_payload, timeout_cycles
        super().__init__({"rx": In(stream.Signature(8)), "frame": Out(stream.Signature(ReceivedFrame)),
                          "buf": In(WritePort.Signature(addr_width=ceil_log2(max_payload), shape=8))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.crc = crc = Processor(CRC16_CCITT_FALSE(data_width=8))
        shift = Signal(FrameHeader.size)  # header bytes enter at the top: the first ends up lowest (LE)
        shifted = Cat(shift[8:], self.rx.payload)
        header = data.View(FrameHeader, shift)
        index = Signal(16)
        oversize = Signal()
        timer = Signal(range(self.timeout_cycles + 1))
        cut = Signal()
        byte, got = self.rx.payload, self.rx.valid & self.rx.ready
        m.d.comb += [self.frame.payload.header.eq(header),
                     crc.data.eq(byte), self.buf.data.eq(byte), self.buf.addr.eq(index)]

        with m.FSM(name="receive"):
            with m.State("HUNT"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(got & (byte == proto.REQUEST_SOF)):
                    m.d.comb += crc.start.eq(1)
                    m.d.sync += [index.eq(0), timer.eq(0), cut.eq(0)]
                    m.next = "HEADER"

            def receiving(name, after):
                with m.State(name):
                    m.d.comb += [self.rx.ready.eq(1), crc.valid.eq(got)]
                    with m.If(got):
                        m.d.sync += timer.eq(0)
                        after()
                    with m.Elif(timer == self.timeout_cycles):
                        m.d.sync += cut.eq(1)
                        m.next = "DONE"
                    with m.Else():
                        m.d.sync += timer.eq(timer + 1)

            def header_byte():
                m.d.sync += [shift.eq(shifted), index.eq(index + 1)]
                with m.If(index == proto.field_bytes(proto.FRAME_HEADER) - 1):
                    length = data.View(FrameHeader, shifted).length
                    m.d.sync += [index.eq(0), oversize.eq(length > self.max_payload)]
                    m.next = "PAYLOAD"
                    with m.If(length == 0):
                        m.next = "CRC0"

            def payload_byte():
                m.d.comb += self.buf.en.eq(~oversize)
                m.d.sync += index.eq(index + 1)
                with m.If(index == header.length - 1):
                    m.next = "CRC0"

            def crc_byte(then):
                def step():
                    m.next = then
                return step

            receiving("HEADER", header_byte)
            receiving("PAYLOAD", payload_byte)
            receiving("CRC0", crc_byte("CRC1"))
            receiving("CRC1", crc_byte("DONE"))

            with m.State("DONE"):
                status = self.frame.payload.status
                with m.If(cut):
                    m.d.comb += status.eq(proto.E_TIMEOUT)
                with m.Elif(oversize):
                    m.d.comb += status.eq(proto.E_LENGTH)
                with m.Elif(~crc.match_detected):
                    m.d.comb += status.eq(proto.E_CRC)
                with m.Else():
                    m.d.comb += status.eq(proto.OK)
                m.d.comb += self.frame.valid.eq(1)
                with m.If(self.frame.ready):
                    m.d.sync += shift.eq(0)
                    m.next = "HUNT"
        return m

