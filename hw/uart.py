"""8N1 UART: a receiver and a transmitter with byte streams, the baud rate set by a clock divisor.

Written with amaranth.lib (the PyPI amaranth-stdio name is an empty placeholder). The receiver has no
back-pressure: a byte the consumer is not ready for is dropped and counted in ``overruns``, so put a FIFO
behind it when the consumer can stall.
"""
from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out


class UARTReceiver(wiring.Component):
    """Samples each bit in its middle, ``divisor`` clock cycles per bit; a start bit that is gone at its
    middle is a glitch and ignored; a missing stop bit is a framing error and the byte is dropped."""

    def __init__(self, divisor: int):
        if divisor < 4:
            raise ValueError(f"UART divisor must be at least 4 clock cycles per bit, not {divisor}")
        self.divisor = divisor
        super().__init__({"rx": In(1, init=1), "stream": Out(stream.Signature(8)),
                          "framing_errors": Out(8), "overruns": Out(8)})

    def elaborate(self, platform):
        m = Module()
        rx = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, rx, init=1)
        timer = Signal(range(self.divisor * 3 // 2 + 1))
        bit = Signal(range(10))
        shreg = Signal(8)
        with m.If(self.stream.valid & self.stream.ready):
            m.d.sync += self.stream.valid.eq(0)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    m.d.sync += timer.eq(self.divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(rx):
                    m.next = "IDLE"  # glitch
                with m.Else():
                    m.d.sync += [timer.eq(self.divisor - 1), bit.eq(0)]
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [shreg.eq((shreg >> 1) | (rx << 7)), bit.eq(bit + 1), timer.eq(self.divisor - 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(rx):
                    with m.If(self.stream.valid & ~self.stream.ready):
                        m.d.sync += self.overruns.eq(self.overruns + 1)
                    m.d.sync += [self.stream.payload.eq(shreg), self.stream.valid.eq(1)]
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += self.framing_errors.eq(self.framing_errors + 1)
                    m.next = "BREAK"
            with m.State("BREAK"):  # wait for the line to go idle before looking for a start bit
                with m.If(rx):
                    m.next = "IDLE"
        return m


class UARTTransmitter(wiring.Component):
    def __init__(self, divisor: int):
        if divisor < 1:
            raise ValueError(f"UART divisor must be positive, not {divisor}")
        self.divisor = divisor
        super().__init__({"stream": In(stream.Signature(8)), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self.divisor))
        frame = Signal(10, init=0x3FF)  # stop bit, 8 data bits LSB first, start bit
        left = Signal(range(11))
        m.d.comb += [self.tx.eq(frame[0]), self.stream.ready.eq(left == 0)]
        with m.If(left == 0):
            with m.If(self.stream.valid):
                m.d.sync += [frame.eq((1 << 9) | (self.stream.payload << 1)), left.eq(10), timer.eq(self.divisor - 1)]
        with m.Elif(timer != 0):
            m.d.sync += timer.eq(timer - 1)
        with m.Else():
            m.d.sync += [frame.eq((frame >> 1) | (1 << 9)), left.eq(left - 1), timer.eq(self.divisor - 1)]
        return m
