"""The PCIe adapter (`qpsnn.hw.pcie_endpoint.PCIeEndpoint`) on its own in amaranth.sim, at each interface width:
completer requests in, completions out, a register window emulated in Python.

Requests and expected completions are packed and unpacked here from the descriptor field tables of
PG213 as the module states them (`CQ_DESCRIPTOR_FIELDS`, `CC_DESCRIPTOR_FIELDS`); statuses, byte counts
and lower addresses come from the PCIe rules written out below, not from the RTL. Every cycle the bench
sets the inputs (random gaps on CQ valid and CC ready from a seeded generator), reads the settled outputs,
records the transfers and ticks.
"""
from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator

from qpsnn.hw import pcie_endpoint as pe
from qpsnn.sw import protocol as proto

BAR0 = 0xC000_0000  # where the root complex put BAR0 (any 4 KiB-aligned address)
APERTURE = 12  # log2 of BAR0's size, as the block reports it
REGS = {proto.Reg.ID: proto.MMIO_ID_VALUE, proto.Reg.STATUS: 0x0003_00FD, proto.Reg.CMD: 0,
        proto.Reg.RESP: proto.RESP_VALID | 0x42}
SC, UR, CA = 0, 1, 4  # PCIe completion statuses
MEM_READ, MEM_WRITE, IO_READ, IO_WRITE, FETCH_ADD, READ_LOCKED, CFG_READ_0, MSG = 0, 1, 2, 3, 4, 7, 8, 12


def pack(fields, **values) -> int:
    out, pos = 0, 0
    for name, bits in fields:
        value = values.pop(name, 0)
        assert 0 <= value < 1 << bits, (name, value)
        out |= value << pos
        pos += bits
    assert not values, values
    return out


def unpack(fields, value: int) -> dict:
    out, pos = {}, 0
    for name, bits in fields:
        if not name.startswith("reserved"):
            out[name] = value >> pos & (1 << bits) - 1
        pos += bits
    return out


class Request:
    """A completer request as the block hands it over: descriptor, payload DWs, byte enables."""

    def __init__(self, req_type, addr, dwords=1, first_be=0xF, last_be=0, payload=(), bar=0, tag=0,
                 discontinue=False, aperture=APERTURE):
        self.req_type, self.addr, self.dwords, self.first_be, self.last_be = req_type, addr, dwords, first_be, last_be
        self.bar, self.tag, self.discontinue, self.payload = bar, tag, discontinue, list(payload)
        desc = pack(pe.CQ_DESCRIPTOR_FIELDS, addr=addr >> 2, dword_count=dwords % 2048, req_type=req_type,
                    requester_id=0x0100, tag=tag, bar_id=bar, bar_aperture=aperture, tc=0, attr=0)
        self.words = [desc >> 32 * i & 0xFFFF_FFFF for i in range(4)] + self.payload

    def beats(self, lanes: int):
        """(tdata, tkeep, tlast, tuser) per beat."""
        out = []
        for start in range(0, len(self.words), lanes):
            chunk = self.words[start:start + lanes]
            tuser = 0
            if start == 0:
                tuser = self.first_be | self.last_be << 4 | 1 << pe.CQ_SOP
            if self.discontinue and start + lanes >= len(self.words):
                tuser |= 1 << pe.CQ_DISCONTINUE
            out.append((sum(w << 32 * i for i, w in enumerate(chunk)), (1 << len(chunk)) - 1,
                        int(start + lanes >= len(self.words)), tuser))
        return out

    def expected(self, regs=REGS):
        """(completion fields or None, window write or None, register read or None) by the PCIe rules."""
        ours = self.bar == 0
        offset = self.addr & (1 << APERTURE) - 1
        in_window = offset < pe.WINDOW_BYTES
        reg = offset & 0xC
        be = [self.first_be >> i & 1 for i in range(4)]
        low = be.index(1) if any(be) else 0
        lower = (self.addr & 0x7C) | low
        if self.req_type == MEM_WRITE:
            write = (reg, self.payload[0]) if ours and self.dwords == 1 and be[0] and in_window \
                and not self.discontinue else None
            return None, write, None
        if self.req_type == MSG:
            return None, None, None
        base = dict(requester_id=0x0100, tag=self.tag, completer_id=0, completer_id_enable=0, tc=0, attr=0,
                    at=0, locked_read=0, poisoned=0, force_ecrc=0)
        if self.req_type in (MEM_READ, READ_LOCKED):
            if self.dwords == 1:
                count = 1 if not any(be) else 4 - low - be[::-1].index(1)
            else:
                last = [self.last_be >> i & 1 for i in range(4)]
                count = self.dwords * 4 - low - last[::-1].index(1)
            if self.req_type == MEM_READ and ours and self.dwords == 1:
                reads = reg if any(be) and in_window else None
                data = regs[reg] if reads is not None else 0
                return dict(base, status=SC, dword_count=1, byte_count=count, lower_address=lower,
                            data=data), None, reads
            status = CA if self.req_type == MEM_READ and ours else UR
            return dict(base, status=status, dword_count=0, byte_count=count, lower_address=lower), None, None
        return dict(base, status=UR, dword_count=0, byte_count=4, lower_address=0), None, None


def requests():
    """Every kind of request the adapter must answer, good ones between the bad."""
    cmd, resp = BAR0 + proto.Reg.CMD, BAR0 + proto.Reg.RESP
    return [
        Request(MEM_READ, BAR0 + proto.Reg.ID, tag=1),
        Request(MEM_WRITE, cmd, payload=[0xA5]),
        Request(MEM_READ, BAR0 + proto.Reg.STATUS, tag=2),
        Request(MEM_READ, resp, first_be=0b0100, tag=3),  # one byte: byte count 1, lower address +2
        Request(MEM_READ, resp, first_be=0b0110, tag=4),
        Request(MEM_READ, BAR0 + 0x20, tag=5),  # past the registers: 0, nothing read
        Request(MEM_READ, resp, first_be=0, tag=6),  # zero-length read: answered, RESP not popped
        Request(MEM_READ, BAR0, dwords=2, last_be=0xF, tag=7),  # bad length: CA
        Request(MEM_READ, BAR0, dwords=1024, last_be=0xF, tag=8),
        Request(MEM_READ, BAR0 + 4, dwords=3, first_be=0b1100, last_be=0b0011, tag=9),
        Request(MEM_WRITE, cmd, dwords=2, last_be=0xF, payload=[0x11, 0x22]),  # bad length: dropped
        Request(MEM_WRITE, cmd, payload=[0x33], discontinue=True),  # the block saw it corrupted: dropped
        Request(MEM_WRITE, cmd, first_be=0b0001, payload=[0x1234_5677]),  # the command byte only: written
        Request(MEM_WRITE, cmd, first_be=0b0010, payload=[0x55]),  # byte 0 not enabled: dropped
        Request(MEM_WRITE, BAR0 + 0x108, payload=[0x66]),  # past the registers: dropped
        Request(IO_READ, 0x1000, bar=4, tag=10),
        Request(IO_WRITE, 0x1000, bar=4, payload=[0x77], tag=11),
        Request(MEM_READ, 0xD000_0000 + proto.Reg.RESP, bar=2, tag=12),  # another BAR: UR
        Request(MEM_WRITE, 0xD000_0000 + proto.Reg.CMD, bar=2, payload=[0x88]),  # dropped
        Request(READ_LOCKED, BAR0, tag=13),
        Request(FETCH_ADD, BAR0 + 8, payload=[1], tag=14),
        Request(CFG_READ_0, 0x0, tag=15),
        Request(MSG, 0x0, payload=[0x99]),
        Request(MEM_READ, (1 << 40) + BAR0 + proto.Reg.ID, tag=16),  # a 64-bit address
        Request(MEM_WRITE, cmd, payload=[0x5A]),
        Request(MEM_READ, BAR0 + proto.Reg.ID, tag=17),
    ]


def run(width: int, reqs, seed: int = 0, gap: float = 0.3, stall: float = 0.3, limit: int = 4000):
    dut = pe.PCIeEndpoint(width)
    lanes = width // 32
    rng = random.Random(seed)
    beats = [(i, b) for i, r in enumerate(reqs) for b in r.beats(lanes)]
    out = {"completions": [], "writes": [], "reads": [], "idle_at_end": False}

    async def bench(ctx):
        pos, cc_words, read_addr, quiet = 0, [], None, 0
        for cycle in range(limit):
            offer = pos < len(beats) and rng.random() >= gap
            data, keep, last, user = beats[pos][1] if offer else (rng.getrandbits(width), 0, 0, 0)
            ctx.set(dut.s_axis_cq_tvalid, offer)
            ctx.set(dut.s_axis_cq_tdata, data)
            ctx.set(dut.s_axis_cq_tkeep, keep)
            ctx.set(dut.s_axis_cq_tlast, last)
            ctx.set(dut.s_axis_cq_tuser, user)
            ready = rng.random() >= stall
            ctx.set(dut.m_axis_cc_tready, ready)
            if offer and ctx.get(dut.s_axis_cq_tready):
                pos += 1
            if ctx.get(dut.m_axis_cc_tvalid) and ready:
                keep = ctx.get(dut.m_axis_cc_tkeep)
                tdata = ctx.get(dut.m_axis_cc_tdata)
                cc_words += [tdata >> 32 * i & 0xFFFF_FFFF for i in range(lanes) if keep >> i & 1]
                if ctx.get(dut.m_axis_cc_tlast):
                    desc = unpack(pe.CC_DESCRIPTOR_FIELDS, sum(w << 32 * i for i, w in enumerate(cc_words[:3])))
                    if len(cc_words) > 3:
                        desc["data"] = cc_words[3]
                    assert len(cc_words) == 3 + desc["dword_count"]
                    out["completions"].append(desc)
                    cc_words = []
            if ctx.get(dut.window.w_en):
                out["writes"].append((ctx.get(dut.window.addr), ctx.get(dut.window.w_data)))
            reading = ctx.get(dut.window.r_en)
            if reading:
                read_addr = ctx.get(dut.window.addr)
                out["reads"].append(read_addr)
            await ctx.tick()
            ctx.set(dut.window.r_data, REGS[read_addr] if reading else rng.getrandbits(32))
            quiet = quiet + 1 if pos == len(beats) and ctx.get(dut.s_axis_cq_tready) else 0
            if quiet > 16:
                break
        out["idle_at_end"] = pos == len(beats) and bool(ctx.get(dut.s_axis_cq_tready))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return out


@pytest.mark.parametrize("width", pe.DATA_WIDTHS)
def test_every_request_gets_its_completion_and_only_good_ones_touch_the_window(width):
    reqs = requests()
    out = run(width, reqs, seed=width)
    expected = [r.expected() for r in reqs]
    completions = [c for c, _, _ in expected if c is not None]
    assert out["completions"] == completions
    assert out["writes"] == [(addr, value) for _, (addr, value) in ((e, w) for e, w, _ in expected if w)]
    assert out["reads"] == [reg for _, _, reg in expected if reg is not None]
    assert out["idle_at_end"]


def test_statuses_as_named():
    assert {pe.CplStatus.SC.value, pe.CplStatus.UR.value, pe.CplStatus.CA.value} == {SC, UR, CA}
    assert (pe.ReqType.MEM_READ.value, pe.ReqType.MEM_WRITE.value, pe.ReqType.IO_READ.value) == (MEM_READ, MEM_WRITE,
                                                                                                 IO_READ)


@pytest.mark.parametrize("seed", range(3))
def test_back_to_back_without_gaps_and_with_long_stalls(seed):
    """No gaps on CQ, a CC sink that is mostly stalled: the adapter holds CQ and loses nothing."""
    reqs = requests() * 2
    for gap, stall in ((0.0, 0.0), (0.0, 0.9)):
        out = run(64, reqs, seed=seed, gap=gap, stall=stall, limit=8000)
        assert len(out["completions"]) == sum(r.expected()[0] is not None for r in reqs)
        assert out["idle_at_end"]
