"""The accelerator behind a memory-mapped register window, for PCIe-class boards: the same command stream
as the UART, through a command FIFO and a response FIFO behind four 32-bit registers (the map:
`qpsnn.sw.protocol.Reg`, ID, STATUS, CMD, RESP).

A read returns its data on the cycle after ``r_en``. The driver (`qpsnn.sw.transport.MMIOTransport`) maps
a PCI BAR with these registers at its start.
"""
from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from qpsnn.sw import protocol as proto

from .accelerator import Accelerator
from .command_processor import CommandProcessor
from .geometry import Capacities
from .records import fields_layout

Status = fields_layout(proto.STATUS_FIELDS)
VALID_BIT = proto.RESP_VALID.bit_length() - 1


class MMIOHost(wiring.Component):
    def __init__(self, accel: Accelerator, capacities: Capacities | None = None, max_payload: int = 1024,
                 timeout_cycles: int = 1_000_000, fifo_depth: int = 256):
        self.processor = CommandProcessor(accel, capacities, max_payload, timeout_cycles)
        self.fifo_depth = fifo_depth
        super().__init__({"addr": In(4), "w_en": In(1), "w_data": In(32), "r_en": In(1), "r_data": Out(32)})

    @property
    def info(self):
        return self.processor.info

    def elaborate(self, platform):
        m = Module()
        m.submodules.processor = processor = self.processor
        m.submodules.cmd_fifo = cmd = fifo.SyncFIFOBuffered(width=8, depth=self.fifo_depth)
        m.submodules.resp_fifo = resp = fifo.SyncFIFOBuffered(width=8, depth=self.fifo_depth)
        wiring.connect(m, cmd.r_stream, processor.rx)
        wiring.connect(m, processor.tx, resp.w_stream)
        reg = self.addr[2:4]
        m.d.comb += [cmd.w_data.eq(self.w_data[:8]), cmd.w_en.eq(self.w_en & (reg == proto.Reg.CMD >> 2))]
        status = Signal(Status)
        m.d.comb += [status.free.eq(self.fifo_depth - cmd.w_level), status.waiting.eq(resp.r_level)]
        popped = Signal()
        with m.If(self.r_en):
            with m.Switch(reg):
                with m.Case(proto.Reg.ID >> 2):
                    m.d.sync += self.r_data.eq(proto.MMIO_ID_VALUE)
                with m.Case(proto.Reg.STATUS >> 2):
                    m.d.sync += self.r_data.eq(status)
                with m.Case(proto.Reg.CMD >> 2):
                    m.d.sync += self.r_data.eq(0)
                with m.Case(proto.Reg.RESP >> 2):
                    m.d.comb += [resp.r_en.eq(1), popped.eq(resp.r_rdy)]
                    m.d.sync += self.r_data.eq(resp.r_data | popped.replicate(1) << VALID_BIT)
        return m
