"""The MMIO driver (`MMIOTransport` + `Device`) against the real `MMIOHost` RTL in amaranth's Python simulator.

The BAR below knows nothing of the register map: it forwards the driver's byte address to the window's
``addr`` port and its ``w_en``/``r_en`` strobes, and reads ``r_data`` on the cycle after ``r_en`` (the
window's own timing). Each ``read32``/``write32`` advances the simulation synchronously: it posts the access
to a background testbench and calls ``Simulator.advance()`` until the testbench has carried it out.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from amaranth.sim import Simulator

from qpsnn.hw.accelerator import Accelerator
from qpsnn.hw.mmio_host import MMIOHost
from qpsnn.sw import protocol as proto
from qpsnn.sw.device import Device
from qpsnn.sw.errors import DeviceError, DeviceTimeout, NoDeviceError
from qpsnn.sw.geometry import geometry_of
from qpsnn.sw.golden import run_golden
from qpsnn.sw.transport import MMIOTransport

IDLE_CYCLES = 4  # cycles the window runs after each access, so the processor makes progress while polled


class SimBAR:
    """A synchronous BAR over an `MMIOHost` in the Python simulator."""

    def __init__(self, host: MMIOHost):
        self.host = host
        self.pending = None  # (kind, addr, data)
        self.result = None
        self.cycles = 0
        self.sim = Simulator(host)
        self.sim.add_clock(1e-8)
        self.sim.add_testbench(self._bench, background=True)

    async def _bench(self, ctx):
        h = self.host
        while True:
            if self.pending is None:
                await ctx.tick()
                self.cycles += 1
                continue
            kind, addr, data = self.pending
            ctx.set(h.addr, addr)
            if kind == "w":
                ctx.set(h.w_data, data)
                ctx.set(h.w_en, 1)
            else:
                ctx.set(h.r_en, 1)
            await ctx.tick()
            ctx.set(h.w_en, 0)
            ctx.set(h.r_en, 0)
            value = ctx.get(h.r_data)  # registered on the edge after r_en
            await ctx.tick().repeat(IDLE_CYCLES)
            self.cycles += 1 + IDLE_CYCLES
            self.result = value if kind == "r" else None
            self.pending = None

    def _access(self, kind, addr, data=0):
        assert 0 <= addr < 16
        self.pending = (kind, int(addr), int(data))
        while self.pending is not None:
            self.sim.advance()
        return self.result

    def read32(self, addr: int) -> int:
        return self._access("r", addr)

    def write32(self, addr: int, value: int) -> None:
        self._access("w", addr, value & 0xFFFF_FFFF)

    def close(self) -> None:
        pass


class SwappedBAR:
    """The same window with STATUS and RESP exchanged: a driver that does not follow the RTL's map."""

    SWAP = {proto.Reg.STATUS: proto.Reg.RESP, proto.Reg.RESP: proto.Reg.STATUS}

    def __init__(self, bar):
        self.bar = bar

    def read32(self, addr):
        return self.bar.read32(self.SWAP.get(addr, addr))

    def write32(self, addr, value):
        self.bar.write32(self.SWAP.get(addr, addr), value)

    def close(self):
        self.bar.close()


def make_host(net):
    return MMIOHost(Accelerator.for_model(net, None, 1), max_payload=64, timeout_cycles=2000)


def test_driver_on_mmio_host_rtl(tiny_net):
    host = make_host(tiny_net)
    bar = SimBAR(host)
    transport = MMIOTransport(bar)  # reads ID: raises NoDeviceError unless the RTL answers MMIO_ID_VALUE
    dev = Device(url="sim", transport=transport, timeout=5.0, retries=0)
    info = dev.identify()
    assert info.fingerprint == host.info.fingerprint
    assert info.fingerprint == proto.fingerprint(geometry_of(tiny_net, tiny_net.lanes, 1))

    dev.load(tiny_net)  # writes, reads back and compares every word
    image = np.random.default_rng(7).integers(0, 256, (1, 6, 6), dtype=np.uint8)
    assert tuple(tiny_net.in_shape) == image.shape
    cls, _cycles, pots = dev.run(image)
    golden = run_golden(tiny_net, torch.from_numpy(image[None]))
    assert cls == int(golden.classes[0])
    assert list(pots) == golden.potentials[0].tolist()
    assert bar.cycles > 0


def test_swapped_status_and_resp_fail(tiny_net):
    bar = SimBAR(make_host(tiny_net))
    transport = MMIOTransport(SwappedBAR(bar))  # ID is where the map says
    dev = Device(url="sim-swapped", transport=transport, timeout=0.3, retries=0)
    with pytest.raises((DeviceTimeout, DeviceError, NoDeviceError)):
        dev.identify()
