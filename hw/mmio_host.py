"""The accelerator behind a memory-mapped register window, for PCIe-class boards: the same command stream
as the UART, through a command FIFO and a response FIFO behind four 32-bit registers.

    0x0  ID      R  0x51505331 ("QPS1")
    0x4  STATUS  R  [15:0] free bytes in the command FIFO, [31:16] bytes waiting in the response FIFO
    0x8  CMD     W  push the low byte into the command FIFO (dropped when full: read STATUS first)
    0xC  RESP    R  pop one byte: bit 8 set when a byte was there, [7:0] the byte

A read returns its data on the cycle after ``r_en``. The driver (`qpsnn.sw.transport.MMIOTransport`) maps
a PCI BAR with these registers at its start.
"""
from __future__ import annotations

from amaranth import Cat, Const, Module, Signal
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from .accelerator import Accelerator
from .command_processor import CommandProcessor
from .geometry import Capacities

ID_VALUE = 0x51505331
REG_ID, REG_STATUS, REG_CMD, REG_RESP = 0x0, 0x4, 0x8, 0xC


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
        m.d.comb += [cmd.w_data.eq(self.w_data[:8]), cmd.w_en.eq(self.w_en & (reg == REG_CMD >> 2))]
        popped = Signal()
        with m.If(self.r_en):
            with m.Switch(reg):
                with m.Case(REG_ID >> 2):
                    m.d.sync += self.r_data.eq(ID_VALUE)
                with m.Case(REG_STATUS >> 2):
                    m.d.sync += self.r_data.eq(Cat((Const(self.fifo_depth, 16) - cmd.w_level)[:16], resp.r_level[:16]))
                with m.Case(REG_CMD >> 2):
                    m.d.sync += self.r_data.eq(0)
                with m.Case(REG_RESP >> 2):
                    m.d.comb += [resp.r_en.eq(1), popped.eq(resp.r_rdy)]
                    m.d.sync += self.r_data.eq(Cat(resp.r_data, popped))
        return m
