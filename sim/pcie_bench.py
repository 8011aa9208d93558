"""cocotb bench behind `qpsnn serve-sim --link pcie`: the PCIe top level (`qpsnn.hw.pcie_endpoint.PCIeHost`)
under cocotbext-pcie's model of a Xilinx UltraScale+ PCIe block, whose link goes to cocotbext-pcie's root
complex. The root complex enumerates the card, and every register operation a client sends over TCP (the
``mmio+socket://`` codec: `qpsnn.sw.protocol.bar_ops`) becomes a memory write or memory read TLP on BAR0.
A read that completes without success (or not at all) reads as all ones, as on a real host.

Like `serve_bench`'s window: one client at a time until the process is stopped, a second client meanwhile
gets BAR_BUSY and is hung up on, a departed client's queued operations are dropped.

With ``checks`` in the job the bench first reports the enumeration and sends malformed and unsupported
requests (`tlp_checks`), writing what came back to the job's ``out``; the block then also decodes a BAR2
(memory) and a BAR4 (I/O) that the adapter does not serve, so that such requests reach the adapter."""
from __future__ import annotations

import json
import logging
import os
import socket
import struct
import warnings

import cocotb
from cocotb.triggers import ClockCycles, FallingEdge, Timer

from qpsnn.hw import pcie_endpoint as pe
from qpsnn.sw import protocol as proto

from .serve_bench import OPS_PER_TURN, _refuse_others, listen_and_announce, serve_clients, take_ops

READ_GROUP = 16  # reads in flight at once (the root complex has 32 tags)
CPL_TIMEOUT_NS = 100_000  # a completion later than this counts as lost (the read returns all ones)
ALL_ONES = 0xFFFFFFFF


def attach(dut, checks: bool = False):
    """The block's model on the top level's ports and a root complex on its link; returns (rc, block)."""
    from cocotbext.axi import AxiStreamBus
    from cocotbext.pcie.core import RootComplex
    from cocotbext.pcie.xilinx.us import UltraScalePlusPcieDevice

    logging.getLogger("cocotb.pcie").setLevel(logging.ERROR)  # enumeration probes empty slots, the checks warn
    rc = RootComplex()
    settings = pe.BLOCK_SETTINGS
    with warnings.catch_warnings():  # the model uses setimmediatevalue and Clock(units=), both deprecated
        warnings.filterwarnings("ignore", r"Use `handle\.set\(Immediate", DeprecationWarning)
        warnings.filterwarnings("ignore", r"The 'units' argument", DeprecationWarning)
        block = UltraScalePlusPcieDevice(
            pcie_generation=settings.generation, pcie_link_width=settings.lanes,
            user_clk_frequency=settings.user_clk_hz, alignment="dword", pf_count=1,
            max_payload_size=settings.max_payload_bytes, enable_client_tag=True, enable_extended_tag=False,
            enable_parity=False,
            user_clk=dut.user_clk, user_reset=dut.user_reset,
            cq_bus=AxiStreamBus.from_prefix(dut, "s_axis_cq"), pcie_cq_np_req=dut.pcie_cq_np_req,
            cc_bus=AxiStreamBus.from_prefix(dut, "m_axis_cc"))
    function = block.functions[0]
    function.vendor_id, function.device_id = settings.vendor_id, settings.device_id
    function.class_code = settings.class_code
    function.configure_bar(pe.WINDOW_BAR, settings.bar0_bytes)  # 32-bit, not prefetchable: reads have effects
    if checks:
        function.configure_bar(2, 4096)
        function.configure_bar(4, 256, io=True)
    rc.make_port().connect(block)
    return rc, block


async def bring_up(dut, checks: bool = False):
    """Reset, link up, enumeration, memory decoding on; returns (rc, block, the card as the root complex
    sees it)."""
    rc, block = attach(dut, checks)
    await FallingEdge(dut.user_reset)
    await Timer(100, "ns")
    await rc.enumerate()
    card = rc.find_device(block.functions[0].pcie_id)
    await card.enable_device()
    return rc, block, card


class BarPort:
    """Register operations on a BAR as TLPs of the root complex: writes posted, reads pipelined in order.
    An offset past the BAR or not DW-aligned sends nothing: its read returns all ones, its write is dropped."""

    def __init__(self, rc, base: int, size: int):
        self.rc, self.base, self.size = rc, base, size

    def _inside(self, offset: int) -> bool:
        return offset % 4 == 0 and 0 <= offset < self.size

    def _request(self, kind, offset: int, data: bytes | None = None, length: int = 4):
        from cocotbext.pcie.core.tlp import Tlp

        req = Tlp()
        req.fmt_type = kind
        req.requester_id = self.rc.pcie_id
        if data is None:
            req.set_addr_be(self.base + offset, length)
        else:
            req.set_addr_be_data(self.base + offset, data)
        return req

    async def write(self, offset: int, value: int) -> None:
        from cocotbext.pcie.core.tlp import TlpType

        if self._inside(offset):
            await self.rc.send(self._request(TlpType.MEM_WRITE, offset, struct.pack("<I", value)))

    async def reads(self, offsets) -> list[int]:
        """One memory read per offset, up to READ_GROUP in flight; the adapter answers in order."""
        from cocotbext.pcie.core.tlp import CplStatus, TlpType

        values = []
        for start in range(0, len(offsets), READ_GROUP):
            tags = []
            for offset in offsets[start:start + READ_GROUP]:
                if not self._inside(offset):
                    tags.append(None)
                    continue
                req = self._request(TlpType.MEM_READ, offset)
                req.tag = await self.rc.alloc_tag()
                tags.append(req.tag)
                await self.rc.send(req)
            for tag in tags:
                if tag is None:
                    values.append(ALL_ONES)
                    continue
                cpl = await self.rc.recv_cpl(tag, CPL_TIMEOUT_NS, "ns")
                self.rc.release_tag(tag)
                ok = cpl is not None and cpl.status == CplStatus.SC and len(cpl.get_data()) >= 4
                values.append(struct.unpack_from("<I", cpl.get_data())[0] if ok else ALL_ONES)
        return values


async def _serve_pcie(dut, conn: socket.socket, srv: socket.socket, bar: BarPort) -> None:
    buf = b""
    while True:
        _refuse_others(srv, proto.BAR_BUSY)
        buf = take_ops(conn, buf)
        if buf is None:
            return  # it left: the operations it queued are dropped, like a pulled cable's
        if len(buf) < proto.BAR_OP.size:
            await ClockCycles(dut.user_clk, 64)
            continue
        whole = min(len(buf) // proto.BAR_OP.size, OPS_PER_TURN) * proto.BAR_OP.size
        ops, buf = proto.bar_ops(buf[:whole])[0], buf[whole:]
        out = bytearray()
        i = 0
        while i < len(ops):
            op, addr, value = ops[i]
            if op == b"W":
                await bar.write(addr, value)
                i += 1
                continue
            j = i
            while j < len(ops) and ops[j][0] != b"W":
                j += 1
            addrs = [a for _, a, _ in ops[i:j]]
            values = await bar.reads(addrs)
            out += struct.pack(f"<{len(values)}I", *values)
            if addrs[-1] == proto.Reg.STATUS and proto.status_fields(values[-1])[1] == 0:
                await ClockCycles(dut.user_clk, 256)  # the host's polling interval: nothing to read yet
            i = j
        if out:
            conn.sendall(bytes(out))


async def _status(rc, req, timeout_ns: int = CPL_TIMEOUT_NS) -> str:
    """The completion status of a non-posted request as its name, or 'none' when none came."""
    cpls = await rc.perform_nonposted_operation(req, timeout_ns, "ns")
    return cpls[0].status.name if cpls else "none"


async def tlp_checks(dut, rc, block, card) -> dict:
    """Enumeration facts, then malformed and unsupported requests: the completion each got, and whether the
    block handed it to the adapter. They are sent while an IDENTIFY reply waits in RESP, which none may pop;
    the reply is drained and parsed at the end."""
    from cocotbext.pcie.core.tlp import Tlp, TlpType
    from cocotbext.pcie.xilinx.us.tlp import Tlp_us

    handed = []  # the requests the block passed to the adapter (its CQ queue)
    put = block.cq_queue.put_nowait
    block.cq_queue.put_nowait = lambda tlp: (handed.append(tlp), put(tlp))[1]

    bar0 = BarPort(rc, card.bar_addr[pe.WINDOW_BAR], card.bar_size[pe.WINDOW_BAR])
    report = {"enumeration": {
        "vendor_id": card.vendor_id, "device_id": card.device_id, "class_code": card.class_code,
        "bar0_size": card.bar_size[pe.WINDOW_BAR], "bar0_flags": card.bar_raw[pe.WINDOW_BAR] & 0xF,
        "id_register": (await bar0.reads([proto.Reg.ID]))[0]}}
    report["status_idle"] = (await bar0.reads([proto.Reg.STATUS]))[0]

    tag = 0x3C
    for byte in proto.request(proto.IDENTIFY, b"", tag):
        await bar0.write(proto.Reg.CMD, byte)
    for _ in range(200):  # the reply, whole, in RESP
        await ClockCycles(dut.user_clk, 64)
        status_before = (await bar0.reads([proto.Reg.STATUS]))[0]
        if proto.status_fields(status_before)[1] and (await bar0.reads([proto.Reg.STATUS]))[0] == status_before:
            break
    report["status_before"] = status_before

    def tlp(kind, addr, length=4, data=None):
        req = Tlp()
        req.fmt_type, req.requester_id = kind, rc.pcie_id
        if data is None:
            req.set_addr_be(addr, length)
        else:
            req.set_addr_be_data(addr, data)
        return req

    got, to_adapter = {}, {}

    async def check(name, req):
        seen = len(handed)
        got[name] = await _status(rc, req) if req.fmt_type not in (TlpType.MEM_WRITE, TlpType.MEM_WRITE_64) \
            else (await rc.send(req), "posted")[1]
        await ClockCycles(dut.user_clk, 16)
        to_adapter[name] = len(handed) > seen

    base0, base2, io4 = card.bar_addr[pe.WINDOW_BAR], card.bar_addr[2], card.bar_addr[4]
    resp, cmd = base0 + proto.Reg.RESP, base0 + proto.Reg.CMD
    # a wrong BAR: memory space no BAR claims (the block answers), a BAR the block decodes but the adapter
    # does not serve (the adapter answers)
    await check("read_outside_bars", tlp(TlpType.MEM_READ, rc.mem_limit + 0x10_0000))
    await check("read_bar2", tlp(TlpType.MEM_READ, base2 + proto.Reg.RESP))
    await check("write_bar2", tlp(TlpType.MEM_WRITE, base2 + proto.Reg.CMD, data=b"\x01\x00\x00\x00"))
    # a bad length: the registers are one DW each, and a burst read of RESP would pop more than one byte
    await check("read_2dw_resp", tlp(TlpType.MEM_READ, resp - 4, 8))
    await check("read_64dw_bar0", tlp(TlpType.MEM_READ, base0, 256))
    await check("write_2dw_cmd", tlp(TlpType.MEM_WRITE, cmd, data=b"\x01\x00\x00\x00\x02\x00\x00\x00"))
    await check("read_zero_length_resp", tlp(TlpType.MEM_READ, resp, 0))  # a flush: answered, pops nothing
    # I/O requests, to the block's I/O BAR
    await check("io_read", tlp(TlpType.IO_READ, io4))
    await check("io_write", tlp(TlpType.IO_WRITE, io4, data=b"\x01\x00\x00\x00"))
    # configuration writes to read-only fields (vendor and device ID, class code): completed, ignored
    ids_before = await card.config_read_dword(0x00)
    class_before = await card.config_read_dword(0x08)
    for where in (0x00, 0x08):
        req = tlp(TlpType.CFG_WRITE_1, where, data=b"\xff\xff\xff\xff")
        req.completer_id = card.pcie_id
        await check(f"config_write_ro_{where:#04x}", req)
    report["config_ro_unchanged"] = (await card.config_read_dword(0x00) == ids_before
                                     and await card.config_read_dword(0x08) == class_before)
    # a write the block marks discontinued (it saw the TLP corrupted): the adapter drops it
    broken = Tlp_us(tlp(TlpType.MEM_WRITE, cmd, data=b"\x01\x00\x00\x00"))
    broken.bar_id, broken.bar_aperture = pe.WINDOW_BAR, (pe.BLOCK_SETTINGS.bar0_bytes - 1).bit_length()
    broken.completer_id, broken.discontinue = block.functions[0].pcie_id, True
    block.cq_queue.put_nowait(broken)
    await ClockCycles(dut.user_clk, 64)
    got["write_discontinued"], to_adapter["write_discontinued"] = "posted", True
    report["statuses"], report["to_adapter"] = got, to_adapter

    # nothing reached the command FIFO, nothing was popped: the IDENTIFY reply is whole and alone
    report["status_after"], report["id_after"] = await bar0.reads([proto.Reg.STATUS, proto.Reg.ID])
    waiting = proto.status_fields(report["status_after"])[1]
    raw = bytes(v & 0xFF for v in await bar0.reads([proto.Reg.RESP] * waiting) if v & proto.RESP_VALID)
    parser = proto.ReplyParser()
    parser.feed(raw)
    reply = parser.take()
    report["reply"] = None if reply is None else {"status": reply.status, "tag": reply.tag,
                                                  "bytes": len(raw), "rest": len(parser.buf)}
    report["status_drained"] = (await bar0.reads([proto.Reg.STATUS]))[0]
    return report


@cocotb.test()
async def serve(dut):
    with open(os.environ["QPSNN_BENCH_JOB"]) as f:
        job = json.load(f)
    rc, block, card = await bring_up(dut, bool(job.get("checks")))
    if job.get("checks"):
        report = await tlp_checks(dut, rc, block, card)
        with open(job["out"] + ".tmp", "w") as f:
            json.dump(report, f)
        os.replace(job["out"] + ".tmp", job["out"])
    bar = BarPort(rc, card.bar_addr[pe.WINDOW_BAR], card.bar_size[pe.WINDOW_BAR])
    srv = listen_and_announce(job)
    await serve_clients(job, dut.user_clk, srv, lambda conn: _serve_pcie(dut, conn, srv, bar))
