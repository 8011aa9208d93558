"""The accelerator behind a UART: RX pin -> receiver -> FIFO -> command processor -> transmitter -> TX pin.
This is the top level the boards build and `qpsnn serve-sim` simulates."""
from __future__ import annotations

from amaranth import Module
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from .accelerator import Accelerator
from .command_processor import CommandProcessor
from .geometry import Capacities
from .uart import UARTReceiver, UARTTransmitter


class UARTHost(wiring.Component):
    """``divisor``: clock cycles per bit (e.g. 12 MHz / 115,200 baud = 104). ``timeout_bytes``: a frame
    that pauses longer than this many byte times is cut and answered with E_TIMEOUT."""

    def __init__(self, accel: Accelerator, divisor: int, capacities: Capacities | None = None,
                 max_payload: int = 1024, timeout_bytes: int = 64, rx_fifo_depth: int = 4):
        self.divisor = divisor
        self.processor = CommandProcessor(accel, capacities, max_payload, timeout_cycles=timeout_bytes * 10 * divisor)
        self.rx_fifo_depth = rx_fifo_depth
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1)})

    @property
    def info(self):
        return self.processor.info

    def elaborate(self, platform):
        m = Module()
        m.submodules.receiver = receiver = UARTReceiver(self.divisor)
        m.submodules.transmitter = transmitter = UARTTransmitter(self.divisor)
        # small and in flip-flops: the host waits for each reply, so only a few bytes ever queue up here
        m.submodules.rx_fifo = rx_fifo = fifo.SyncFIFO(width=8, depth=self.rx_fifo_depth)
        m.submodules.processor = processor = self.processor
        m.d.comb += [receiver.rx.eq(self.rx), self.tx.eq(transmitter.tx)]
        wiring.connect(m, receiver.stream, rx_fifo.w_stream)
        wiring.connect(m, rx_fifo.r_stream, processor.rx)
        wiring.connect(m, processor.tx, transmitter.stream)
        return m
