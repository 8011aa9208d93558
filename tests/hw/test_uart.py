"""UART in amaranth.sim: transmitter into receiver at the same divisor, bytes back to back; a start-bit glitch
is ignored; a missing stop bit is a framing error and no byte."""
import random

import pytest
from amaranth import Module
from amaranth.sim import Simulator

from qpsnn.hw.uart import UARTReceiver, UARTTransmitter


def loopback(data: bytes, divisor: int):
    m = Module()
    m.submodules.tx = tx = UARTTransmitter(divisor)
    m.submodules.rx = rx = UARTReceiver(divisor)
    m.d.comb += rx.rx.eq(tx.tx)
    got = []

    async def send(ctx):
        for byte in data:
            ctx.set(tx.stream.payload, byte)
            ctx.set(tx.stream.valid, 1)
            await ctx.tick().until(tx.stream.ready)
        ctx.set(tx.stream.valid, 0)

    async def receive(ctx):
        ctx.set(rx.stream.ready, 1)
        while len(got) < len(data):
            await ctx.tick()
            if ctx.get(rx.stream.valid):
                got.append(ctx.get(rx.stream.payload))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(send)
    sim.add_testbench(receive)
    sim.run_until(1e-6 * divisor * 10 * (len(data) + 4))
    return bytes(got)


@pytest.mark.parametrize("divisor", [4, 7, 16])
def test_loopback_back_to_back(divisor):
    data = bytes(random.Random(divisor).randrange(256) for _ in range(24)) + b"\x00\xff\x55\xa5"
    assert loopback(data, divisor) == data


def drive_line(levels, divisor=8):
    """Drive the receiver's pin with (level, bit times) pieces; return bytes and framing errors."""
    dut = UARTReceiver(divisor)
    got = []

    async def tb(ctx):
        ctx.set(dut.stream.ready, 1)
        for level, bits in levels:
            ctx.set(dut.rx, level)
            for _ in range(int(bits * divisor)):
                await ctx.tick()
                if ctx.get(dut.stream.valid):
                    got.append(ctx.get(dut.stream.payload))
        got.append(ctx.get(dut.framing_errors))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    return got


def bits_of(byte, stop=1):
    return [(0, 1)] + [((byte >> i) & 1, 1) for i in range(8)] + [(stop, 1)]


def test_glitch_is_ignored_and_bytes_follow():
    assert drive_line([(1, 2), (0, 0.25), (1, 2)] + bits_of(0x3C) + [(1, 2)]) == [0x3C, 0]


def test_missing_stop_bit_is_a_framing_error():
    assert drive_line([(1, 2)] + bits_of(0x81, stop=0) + [(0, 3), (1, 2)] + bits_of(0x42) + [(1, 2)]) == [0x42, 1]
