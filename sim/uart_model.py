"""The host end of the UART in a cocotb bench: `cocotbext.uart.UartSource` drives bytes onto the design's RX pin
and `UartSink` collects bytes from its TX pin, bit-timed with `Timer`, so the simulator runs freely between bit edges.

cocotbext-uart 0.1.4 under cocotb 2.1: it works (``Timer(t, 'ns')`` passes the unit positionally, which 2.1 takes),
but its UartSource constructor calls ``setimmediatevalue``, which warns "DeprecationWarning: Use
`handle.set(Immediate(...))` or `handle.value = Immediate(...)` instead."; that one warning is silenced around the
constructor (the pin is driven high either way, as the old call did). Two more things to mind: it derives the
bit time as ``int(1e9 / baud)`` ns, which truncates (a baud of exactly 1e9 / 110 gives 109 ns), so the baud handed
to it is nudged half a nanosecond long to make every bit exactly ``divisor * CLOCK_NS`` ns; and it logs every byte
at INFO, so its loggers are set to WARNING here."""
from __future__ import annotations

import logging
import warnings
from collections import deque

import cocotb
from cocotb.triggers import Event
from cocotbext.uart import UartSink, UartSource

CLOCK_NS = 10


def _baud_for(bit_ns: int) -> float:
    """The baud at which cocotbext-uart's ``int(1e9 / baud)`` (and its half bit, ``int(1e9 / baud / 2)``) come out
    at exactly ``bit_ns`` (and ``bit_ns // 2``) ns."""
    baud = 1e9 / (bit_ns + 0.5)
    assert int(1e9 / baud) == bit_ns and int(1e9 / baud / 2) == bit_ns // 2, bit_ns
    return baud


def _quiet(signal) -> None:
    logging.getLogger(f"cocotb.{signal._path}").setLevel(logging.WARNING)  # the logger cocotbext-uart uses


class UARTHostModel:
    def __init__(self, dut, divisor: int):
        self.dut, self.bit_ns = dut, divisor * CLOCK_NS
        baud = _baud_for(self.bit_ns)
        _quiet(dut.rx)
        _quiet(dut.tx)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"Use `handle\.set\(Immediate", DeprecationWarning)
            self.source = UartSource(dut.rx, baud=baud, bits=8, stop_bits=1)  # drives rx high from the start
        self.sink = UartSink(dut.tx, baud=baud, bits=8, stop_bits=1)  # a byte lands mid stop bit
        self._received: deque[int] = deque()
        self.idle = Event()
        self.idle.set()
        self._sent = Event()
        cocotb.start_soon(self._watch_idle())

    @property
    def byte_ns(self) -> int:
        return 10 * self.bit_ns

    @property
    def received(self) -> deque[int]:
        """The bytes received and not yet taken."""
        self._received.extend(self.sink.read_nowait())
        return self._received

    def send(self, data: bytes) -> None:
        """Queue ``data`` for the RX pin; returns at once."""
        if not data:
            return
        self.idle.clear()
        self.source.write_nowait(data)
        self._sent.set()

    async def _watch_idle(self):
        # UartSource sets its idle event when its queue runs dry after a byte; `idle` follows it, checked against
        # UartSource.idle() in case more was sent in the meantime
        while True:
            await self._sent.wait()
            self._sent.clear()
            await self.source.wait()
            if self.source.idle():
                self.idle.set()

    def take(self) -> bytes:
        """Everything received so far, which is then forgotten."""
        data = bytes(self.received)
        self._received.clear()
        return data

    def flush(self) -> None:
        """Drop every queued byte not yet started on the RX pin and everything received but not taken. A byte
        already on the pin finishes (the line is left high after its stop bit); `idle` is set once nothing is on it."""
        self.source.clear()
        self.sink.clear()
        self._received.clear()
        if self.source.idle():
            # nothing in flight: UartSource may not set its own idle event again (a byte dropped before its
            # sender picked it up), so set ours here
            self.idle.set()
