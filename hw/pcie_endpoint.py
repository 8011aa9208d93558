"""The register window (`qpsnn.hw.mmio_host.MMIOHost`) behind a PCIe hard block: an adapter between the user
interface of a Xilinx UltraScale+ PCIe block (PG213, "Integrated Block for PCI Express") and the window, so
BAR0 of the board holds the four registers of `qpsnn.sw.protocol.Reg` and one command processor serves the
UART, the bare window and PCIe alike.

The adapter speaks two of the block's AXI4-Stream interfaces, with the straddle options off and DWORD
alignment (the block's defaults at 64, 128 and 256 bits):

* completer request (CQ), block -> adapter: ``s_axis_cq_tdata/tkeep/tlast/tuser/tvalid`` in,
  ``s_axis_cq_tready`` out (wire the block's ``m_axis_cq_*`` here);
* completer completion (CC), adapter -> block: ``m_axis_cc_tdata/tkeep/tlast/tuser/tvalid`` out,
  ``m_axis_cc_tready`` in (wire these to the block's ``s_axis_cc_*``);
* ``pcie_cq_np_req`` out: always asking for non-posted requests (the adapter holds ``tready`` low while it
  answers one, which is all the flow control one register at a time needs).

The block decodes the BARs and answers configuration requests itself; every request it hands over is
answered here, one at a time, in order:

* a 1-DW memory read of the window's BAR: the register (Successful Completion with its DW); offsets past
  the 16 registers' bytes read as 0; a zero-length read (byte enables 0) answers without reading, so it
  cannot pop RESP;
* a 1-DW memory write with byte 0 enabled: the register write (CMD takes the low byte); others are dropped;
* a memory read of another length: Completer Abort (the registers are 32-bit and RESP pops on each read,
  so a burst would lose bytes); a memory write of another length is dropped;
* a request that hit another BAR, an I/O request, a locked read, an atomic or a configuration request:
  Unsupported Request when it wants a completion, dropped when posted (a write or message);
* a request marked ``discontinue`` (the block saw it corrupted): dropped.

A request is read to its last beat before it is judged, and the adapter never waits on the window, so no
request (however malformed) stalls the link. No MSI: the driver polls STATUS.
"""
from __future__ import annotations

from dataclasses import dataclass

from amaranth import Cat, ClockDomain, Const, Module, Signal
from amaranth.lib import enum, wiring
from amaranth.lib.wiring import In, Out

from .records import fields_layout

# One field table per descriptor, in PG213's bit order (low bit first); both the RTL's layouts and the
# benches that decode the same bits come from these.
CQ_DESCRIPTOR_FIELDS = (
    ("at", 2), ("addr", 62),  # DW 0-1: address type, address (a DW address: bits 1:0 are 0)
    ("dword_count", 11), ("req_type", 4), ("reserved0", 1), ("requester_id", 16),  # DW 2
    ("tag", 8), ("target_function", 8), ("bar_id", 3), ("bar_aperture", 6), ("tc", 3), ("attr", 3),
    ("reserved1", 1),  # DW 3
)
CC_DESCRIPTOR_FIELDS = (
    ("lower_address", 7), ("reserved0", 1), ("at", 2), ("reserved1", 6), ("byte_count", 13),
    ("locked_read", 1), ("reserved2", 2),  # DW 0
    ("dword_count", 11), ("status", 3), ("poisoned", 1), ("reserved3", 1), ("requester_id", 16),  # DW 1
    ("tag", 8), ("completer_id", 16), ("completer_id_enable", 1), ("tc", 3), ("attr", 3), ("force_ecrc", 1),  # DW 2
)
# the tuser bits the adapter reads or drives (64/128/256-bit interfaces; 512 bits moves them)
CQ_TUSER_BITS = 88  # UltraScale+ (85 on UltraScale)
CQ_FIRST_BE, CQ_LAST_BE, CQ_SOP, CQ_DISCONTINUE = (0, 4), (4, 4), 40, 41
CC_TUSER_BITS = 33  # bit 0 discontinue, 32:1 parity (unused: parity checking off)
DATA_WIDTHS = (64, 128, 256)

WINDOW_BYTES = 16  # the registers of qpsnn.sw.protocol.Reg; the rest of the BAR reads 0
WINDOW_BAR = 0


@dataclass(frozen=True)
class BlockSettings:
    """The hard block's configuration this adapter expects (a board's IP customization; the bench's model).
    BAR0 must be a 32-bit, non-prefetchable memory BAR: reading RESP pops a byte."""
    vendor_id: int = 0x10EE  # the IP's defaults for a Gen3 x1 UltraScale+ endpoint
    device_id: int = 0x9031
    class_code: int = 0x120000  # processing accelerator
    bar0_bytes: int = 4096  # any power of two from 128 bytes; past the 16 register bytes reads 0
    generation: int = 3
    lanes: int = 1
    user_clk_hz: float = 125e6
    data_width: int = 64
    max_payload_bytes: int = 128


BLOCK_SETTINGS = BlockSettings()


CQDescriptor = fields_layout(CQ_DESCRIPTOR_FIELDS)
CCDescriptor = fields_layout(CC_DESCRIPTOR_FIELDS)
assert CQDescriptor.size == 128 and CCDescriptor.size == 96


class ReqType(enum.Enum, shape=4):
    """The CQ descriptor's request type."""
    MEM_READ = 0b0000
    MEM_WRITE = 0b0001
    IO_READ = 0b0010
    IO_WRITE = 0b0011
    MEM_FETCH_ADD = 0b0100
    MEM_SWAP = 0b0101
    MEM_CAS = 0b0110
    MEM_READ_LOCKED = 0b0111
    CFG_READ_0 = 0b1000
    CFG_READ_1 = 0b1001
    CFG_WRITE_0 = 0b1010
    CFG_WRITE_1 = 0b1011
    MSG = 0b1100
    MSG_VENDOR = 0b1101
    MSG_ATS = 0b1110


POSTED = (ReqType.MEM_WRITE, ReqType.MSG, ReqType.MSG_VENDOR, ReqType.MSG_ATS)  # no completion is sent


class CplStatus(enum.Enum, shape=3):
    """A completion's status (PCIe Base, Completion Status field)."""
    SC = 0b000  # successful completion
    UR = 0b001  # unsupported request
    CRS = 0b010  # configuration request retry status
    CA = 0b100  # completer abort


class Answer(enum.Enum, shape=2):
    """What the adapter does with a request it has read."""
    DROP = 0  # nothing: a posted request it does not take, or one the block discontinued
    WRITE = 1  # a register write
    READ = 2  # a completion with a DW of data (the register's, or 0 past the registers or for zero length)
    REFUSE = 3  # a completion without data (UR or CA)


# The window's ports as the adapter drives them; `MMIOHost` has the same members, flipped.
WindowSignature = wiring.Signature({"addr": Out(4), "w_en": Out(1), "w_data": Out(32), "r_en": Out(1),
                                    "r_data": In(32)})


def _axis(prefix: str, width: int, user: int, direction) -> dict:
    """One AXI4-Stream's members with flat names (``s_axis_cq_tdata``...), the user-side mirror of the block's
    (``m_axis_cq_tdata``...); ``direction`` is that of the payload (In for a sink)."""
    back = Out if direction is In else In
    return {f"{prefix}_tdata": direction(width), f"{prefix}_tkeep": direction(width // 32),
            f"{prefix}_tlast": direction(1), f"{prefix}_tuser": direction(user), f"{prefix}_tvalid": direction(1),
            f"{prefix}_tready": back(1)}


def _first_byte(m: Module, be) -> Signal:
    """Index of the lowest enabled byte of a 4-bit byte enable (0 when none is)."""
    out = Signal(2)
    with m.Switch(be):
        for value in range(16):
            with m.Case(value):
                low = next((i for i in range(4) if value >> i & 1), 0)
                m.d.comb += out.eq(low)
    return out


def _last_byte(m: Module, be) -> Signal:
    """Index of the highest enabled byte of a 4-bit byte enable (0 when none is)."""
    out = Signal(2)
    with m.Switch(be):
        for value in range(16):
            with m.Case(value):
                high = max((i for i in range(4) if value >> i & 1), default=0)
                m.d.comb += out.eq(high)
    return out


class PCIeEndpoint(wiring.Component):
    """The CQ/CC adapter; ``window`` drives the register window (connect it to `MMIOHost`). ``bar``: the BAR
    that maps the window (0). ``data_width``: the block's interface width (64, 128 or 256 bits)."""

    def __init__(self, data_width: int = 64, bar: int = 0):
        if data_width not in DATA_WIDTHS:
            raise ValueError(f"data_width {data_width}: the adapter takes {', '.join(map(str, DATA_WIDTHS))} bits")
        self.data_width, self.bar = data_width, bar
        super().__init__({**_axis("s_axis_cq", data_width, CQ_TUSER_BITS, In),
                          **_axis("m_axis_cc", data_width, CC_TUSER_BITS, Out),
                          "pcie_cq_np_req": Out(2), "window": Out(WindowSignature)})

    def elaborate(self, platform):
        m = Module()
        lanes = self.data_width // 32
        head_dws = 5  # the descriptor's 4 DW and the first payload DW
        beats_needed = -(-head_dws // lanes)

        head = Signal(32 * head_dws)  # the request's first DWs as they arrive
        req = CQDescriptor(head[:128])
        payload = head[128:160]
        first_be, last_be = Signal(4), Signal(4)
        beat = Signal(range(beats_needed + 1))  # saturates: later beats are read and ignored
        broken = Signal()  # discontinue seen on a beat of this request

        cpl = Signal(CCDescriptor)
        cpl_data = Signal(32)
        cpl_dws = Signal(range(5))  # DWs of the completion (3 = descriptor only, 4 = with data)
        cc_beat = Signal(range(-(-4 // lanes) + 1))

        m.d.comb += self.pcie_cq_np_req.eq(1)

        cq = {name: getattr(self, f"s_axis_cq_{name}") for name in ("tdata", "tlast", "tuser", "tvalid", "tready")}
        cc = {name: getattr(self, f"m_axis_cc_{name}") for name in ("tdata", "tkeep", "tlast", "tuser", "tvalid",
                                                                    "tready")}
        take = Signal()
        m.d.comb += take.eq(cq["tvalid"] & cq["tready"])

        # the decision, from the whole request
        req_type = Signal(ReqType)
        m.d.comb += req_type.eq(req.req_type)
        posted = Signal()
        m.d.comb += posted.eq(req.req_type.matches(*(t.value for t in POSTED)))
        offset_high = Signal()  # an address bit inside the BAR's aperture but above the registers
        m.d.comb += offset_high.eq(Cat(Cat(req.addr[j - 2]) & (req.bar_aperture > j)
                                       for j in range(WINDOW_BYTES.bit_length() - 1, 64)).any())
        one_dw = Signal()
        m.d.comb += one_dw.eq(req.dword_count == 1)
        ours = Signal()
        m.d.comb += ours.eq(req.bar_id == self.bar)
        answer = Signal(Answer)
        status = Signal(CplStatus)
        with m.If(broken):
            m.d.comb += answer.eq(Answer.DROP)
        with m.Elif(ours & (req_type == ReqType.MEM_WRITE) & one_dw & first_be[0] & ~offset_high):
            m.d.comb += answer.eq(Answer.WRITE)
        with m.Elif(ours & (req_type == ReqType.MEM_READ) & one_dw):
            m.d.comb += answer.eq(Answer.READ)
        with m.Elif(posted):
            m.d.comb += answer.eq(Answer.DROP)
        with m.Else():
            m.d.comb += answer.eq(Answer.REFUSE)
        with m.If(ours & (req_type == ReqType.MEM_READ)):
            m.d.comb += status.eq(CplStatus.CA)  # a memory read of the window, of another length than 1 DW
        with m.Else():
            m.d.comb += status.eq(CplStatus.UR)

        # byte count and lower address (PCIe Base 2.2.9): memory reads from the byte enables, others 4 and 0
        low, high = _first_byte(m, first_be), _last_byte(m, last_be)
        high_single = _last_byte(m, first_be)
        dws = Signal(12)
        m.d.comb += dws.eq(Cat(req.dword_count, req.dword_count == 0))  # 0 DW means 1024
        is_mem_read = Signal()
        m.d.comb += is_mem_read.eq((req_type == ReqType.MEM_READ) | (req_type == ReqType.MEM_READ_LOCKED))
        byte_count = Signal(13)
        lower_address = Signal(7)
        with m.If(~is_mem_read):
            m.d.comb += [byte_count.eq(4), lower_address.eq(0)]
        with m.Else():
            m.d.comb += lower_address.eq(Cat(low, req.addr[:5]))
            with m.If(first_be == 0):
                m.d.comb += byte_count.eq(1)
            with m.Elif(dws == 1):
                m.d.comb += byte_count.eq(high_single - low + 1)
            with m.Else():
                m.d.comb += byte_count.eq(dws * 4 - low - (3 - high))

        window = self.window
        m.d.comb += [window.addr.eq(Cat(Const(0, 2), req.addr[:2])), window.w_data.eq(payload)]

        with m.FSM():
            with m.State("RECEIVE"):
                m.d.comb += cq["tready"].eq(1)
                with m.If(take):
                    for i in range(head_dws):
                        at_beat, lane = divmod(i, lanes)
                        with m.If(beat == at_beat):
                            m.d.sync += head[32 * i:32 * (i + 1)].eq(cq["tdata"][32 * lane:32 * (lane + 1)])
                    with m.If(beat == 0):
                        m.d.sync += [first_be.eq(cq["tuser"][CQ_FIRST_BE[0]:sum(CQ_FIRST_BE)]),
                                     last_be.eq(cq["tuser"][CQ_LAST_BE[0]:sum(CQ_LAST_BE)]),
                                     broken.eq(cq["tuser"][CQ_DISCONTINUE])]
                    with m.Else():
                        m.d.sync += broken.eq(broken | cq["tuser"][CQ_DISCONTINUE])
                    with m.If(cq["tlast"]):
                        m.d.sync += beat.eq(0)
                        m.next = "DECIDE"
                    with m.Elif(beat != beats_needed):
                        m.d.sync += beat.eq(beat + 1)
            with m.State("DECIDE"):
                m.d.sync += [
                    cpl.lower_address.eq(lower_address), cpl.at.eq(req.at), cpl.byte_count.eq(byte_count),
                    cpl.requester_id.eq(req.requester_id), cpl.tag.eq(req.tag),
                    cpl.completer_id.eq(req.target_function),  # bus and device: the block fills them in
                    cpl.completer_id_enable.eq(0), cpl.tc.eq(req.tc), cpl.attr.eq(req.attr),
                    cpl.locked_read.eq(0), cpl.poisoned.eq(0), cpl.force_ecrc.eq(0),
                    cpl_data.eq(0),
                ]
                with m.Switch(answer):
                    with m.Case(Answer.DROP):
                        m.next = "RECEIVE"
                    with m.Case(Answer.WRITE):
                        m.d.comb += window.w_en.eq(1)
                        m.next = "RECEIVE"
                    with m.Case(Answer.READ):
                        m.d.sync += [cpl.status.eq(CplStatus.SC), cpl.dword_count.eq(1), cpl_dws.eq(4)]
                        with m.If((first_be != 0) & ~offset_high):
                            m.d.comb += window.r_en.eq(1)
                            m.next = "READ"
                        with m.Else():
                            m.next = "COMPLETE"
                    with m.Case(Answer.REFUSE):
                        m.d.sync += [cpl.status.eq(status), cpl.dword_count.eq(0), cpl_dws.eq(3)]
                        m.next = "COMPLETE"
            with m.State("READ"):  # the window answers the cycle after r_en
                m.d.sync += cpl_data.eq(window.r_data)
                m.next = "COMPLETE"
            with m.State("COMPLETE"):
                words = Cat(cpl.as_value(), cpl_data)
                m.d.comb += cc["tvalid"].eq(1)
                with m.Switch(cc_beat):
                    for b in range(-(-4 // lanes)):
                        with m.Case(b):
                            for lane in range(lanes):
                                i = b * lanes + lane
                                if i < 4:
                                    m.d.comb += [cc["tdata"][32 * lane:32 * (lane + 1)].eq(words[32 * i:32 * (i + 1)]),
                                                 cc["tkeep"][lane].eq(i < cpl_dws)]
                            m.d.comb += cc["tlast"].eq((b + 1) * lanes >= cpl_dws)
                with m.If(cc["tready"]):
                    with m.If(cc["tlast"]):
                        m.d.sync += cc_beat.eq(0)
                        m.next = "RECEIVE"
                    with m.Else():
                        m.d.sync += cc_beat.eq(cc_beat + 1)
        return m


class PCIeHost(wiring.Component):
    """The card's top level without the block: the adapter and ``window`` (an `MMIOHost`, the accelerator
    behind it) in the block's ``user_clk`` domain, reset by ``user_reset``. Its ports are the adapter's (CQ,
    CC, ``pcie_cq_np_req``) and that clock and reset."""

    def __init__(self, window, data_width: int = 64):
        self.window, self.data_width = window, data_width
        super().__init__({"user_clk": In(1), "user_reset": In(1),
                          **_axis("s_axis_cq", data_width, CQ_TUSER_BITS, In),
                          **_axis("m_axis_cc", data_width, CC_TUSER_BITS, Out), "pcie_cq_np_req": Out(2)})

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = sync = ClockDomain()
        m.d.comb += [sync.clk.eq(self.user_clk), sync.rst.eq(self.user_reset)]
        m.submodules.endpoint = endpoint = PCIeEndpoint(self.data_width)
        m.submodules.window = window = self.window
        wiring.connect(m, endpoint.window, window)
        for name in self.signature.members:
            if name.startswith(("s_axis_cq", "m_axis_cc")) or name == "pcie_cq_np_req":
                port, inner = getattr(self, name), getattr(endpoint, name)
                if self.signature.members[name].flow == In:
                    m.d.comb += inner.eq(port)
                else:
                    m.d.comb += port.eq(inner)
        return m
