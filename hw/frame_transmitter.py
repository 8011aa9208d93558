"""The last stage of the command processor: frames a reply around a body that streams in.

The header (status, the request's tag, the body's length) is held on ``reply`` for the whole frame and
taken with the last CRC byte, so the dispatcher knows the reply has left when its header is accepted. The
body bytes are taken from ``body`` as they are sent, so no reply is ever buffered whole.
"""
from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.crc import Processor
from amaranth.lib.crc.catalog import CRC16_CCITT_FALSE
from amaranth.lib.wiring import In, Out

from qpsnn.sw import protocol as proto

from .records import FrameHeader


class FrameTransmitter(wiring.Component):
    """``reply``: a header per reply (``code`` = status); ``body``: exactly ``length`` bytes; ``tx``: bytes out."""

    def __init__(self):
        super().__init__({"reply": In(stream.Signature(FrameHeader)), "body": In(stream.Signature(8)),
                          "tx": Out(stream.Signature(8))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.crc = crc = Processor(CRC16_CCITT_FALSE(data_width=8))
        header_bytes = proto.field_bytes(proto.FRAME_HEADER)
        head = data.View(data.ArrayLayout(8, header_bytes), self.reply.payload.as_value())
        index = Signal(16)
        sent = self.tx.valid & self.tx.ready

        def send(value, checked=True):
            m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(value)]
            if checked:
                m.d.comb += [crc.data.eq(value), crc.valid.eq(sent)]

        with m.FSM(name="transmit"):
            with m.State("IDLE"):
                with m.If(self.reply.valid):
                    m.d.comb += crc.start.eq(1)
                    m.d.sync += index.eq(0)
                    m.next = "START"
            with m.State("START"):
                send(proto.REPLY_SOF, checked=False)
                with m.If(sent):
                    m.next = "HEADER"
            with m.State("HEADER"):
                send(head[index])
                with m.If(sent):
                    m.d.sync += index.eq(index + 1)
                    with m.If(index == header_bytes - 1):
                        m.d.sync += index.eq(0)
                        m.next = "BODY"
            with m.State("BODY"):
                with m.If(index == self.reply.payload.length):
                    m.next = "CRC0"
                with m.Else():
                    send(self.body.payload)
                    m.d.comb += [self.tx.valid.eq(self.body.valid), self.body.ready.eq(self.tx.ready)]
                    with m.If(sent):
                        m.d.sync += index.eq(index + 1)
            with m.State("CRC0"):
                send(crc.crc[8:], checked=False)
                with m.If(sent):
                    m.next = "CRC1"
            with m.State("CRC1"):
                send(crc.crc[:8], checked=False)
                m.d.comb += self.reply.ready.eq(sent)
                with m.If(sent):
                    m.next = "IDLE"
        return m
