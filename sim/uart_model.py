"""The host end of the UART in a cocotb bench: drive bytes onto the design's RX pin and collect bytes
from its TX pin, bit-timed with `Timer`, so the simulator runs freely between bit edges."""
from __future__ import annotations

from collections import deque

import cocotb
from cocotb.triggers import Event, FallingEdge, Timer

CLOCK_NS = 10


class UARTHostModel:
    def __init__(self, dut, divisor: int):
        self.dut, self.bit_ns = dut, divisor * CLOCK_NS
        self.received: deque[int] = deque()
        self.arrived = Event()
        self.idle = Event()
        self.idle.set()
        self._queue: deque[int] = deque()
        self._wake = Event()
        dut.rx.value = 1
        cocotb.start_soon(self._drive())
        cocotb.start_soon(self._monitor())

    @property
    def byte_ns(self) -> int:
        return 10 * self.bit_ns

    def send(self, data: bytes) -> None:
        self._queue.extend(data)
        self.idle.clear()
        self._wake.set()

    async def _drive(self):
        while True:
            if not self._queue:
                self.idle.set()
                self._wake.clear()
                await self._wake.wait()
            byte = self._queue.popleft()
            for bit in [0] + [(byte >> i) & 1 for i in range(8)] + [1]:
                self.dut.rx.value = bit
                await Timer(self.bit_ns, unit="ns")

    async def _monitor(self):
        while True:
            await FallingEdge(self.dut.tx)
            await Timer(self.bit_ns * 3 // 2, unit="ns")
            byte = 0
            for i in range(8):
                byte |= int(self.dut.tx.value) << i
                await Timer(self.bit_ns, unit="ns")
            self.received.append(byte)  # now in the middle of the stop bit
            self.arrived.set()

    def take(self) -> bytes:
        data = bytes(self.received)
        self.received.clear()
        self.arrived.clear()
        return data
