"""The device side of the host protocol (`qpsnn.sw.protocol`): parses framed requests from a byte stream,
drives the accelerator's configuration, read-back and input ports, and sends framed replies.

A request's payload is buffered and its CRC checked before anything acts on it, so a corrupt, cut or
refused frame never changes the device. Every wait is bounded: a frame that stops arriving times out after
``timeout_cycles`` without a byte (reply ``E_TIMEOUT``), and running a sample always ends in a result.

RUN carries raw pixels (``offset`` + bytes, chunked by the driver); the processor streams them into the
accelerator's pixel port in raster order. The accelerator does not count the cycles it waits for input, so
the cycles reported over the link equal the cycle model's.
"""
from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, ResetInserter, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.crc import Processor
from amaranth.lib.crc.catalog import CRC16_CCITT_FALSE
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from qpsnn.sw import protocol as proto

from .accelerator import Accelerator
from .geometry import Capacities


def device_info(accel: Accelerator, capacities: Capacities, max_payload: int) -> proto.DeviceInfo:
    geo = accel.geo
    layers = tuple(proto.LayerInfo(lg.kind, lg.bits, lg.channels, wcap, ncap)
                   for lg, wcap, ncap in zip(geo.layers, capacities.weight_words, capacities.neuron_words))
    return proto.DeviceInfo(proto.VERSION, geo.lanes, geo.timesteps, geo.classes, geo.membrane_bits,
                            proto.word_bytes(accel.data_bits), max_payload, proto.fingerprint(geo),
                            tuple(geo.in_shape), layers, geo.offsets)


class CommandProcessor(wiring.Component):
    """``rx``: request bytes in; ``tx``: reply bytes out. Owns the accelerator it serves."""

    HEADER_BYTES = {proto.BEGIN_LOAD: 4, proto.WRITE: proto.WRITE_HEADER, proto.READ: proto.READ_PAYLOAD,
                    proto.RUN: proto.RUN_HEADER}

    def __init__(self, accel: Accelerator, capacities: Capacities | None = None, max_payload: int = 1024,
                 timeout_cycles: int = 100_000):
        if max_payload < 64 or max_payload & (max_payload - 1) or max_payload > 32768:
            raise ValueError(f"max_payload must be a power of two in 64..32768, not {max_payload}")
        self.accel = accel
        self.capacities = capacities or Capacities.exactly(accel.geo)
        self.max_payload, self.timeout_cycles = max_payload, timeout_cycles
        self.info = device_info(accel, self.capacities, max_payload)
        super().__init__({"rx": In(stream.Signature(8)), "tx": Out(stream.Signature(8)),
                          "frames": Out(16), "errors": Out(16)})

    def elaborate(self, platform):
        m = Module()
        acc, geo, info = self.accel, self.accel.geo, self.info
        D, MAXP, K = info.word_bytes, self.max_payload, geo.classes
        n_layers = len(geo.layers)
        C, H, W = geo.in_shape
        n_pix = C * H * W

        accel_reset = Signal()
        m.submodules.accel = ResetInserter(accel_reset)(acc)
        m.submodules.buf = buf = Memory(shape=8, depth=MAXP, init=[])
        bwp, brp = buf.write_port(), buf.read_port()
        m.submodules.crc_rx = crc_rx = Processor(CRC16_CCITT_FALSE(data_width=8))
        m.submodules.crc_tx = crc_tx = Processor(CRC16_CCITT_FALSE(data_width=8))

        cmd = Signal(8)
        length = Signal(16)
        idx = Signal(16)
        oversize = Signal()
        timer = Signal(range(self.timeout_cycles + 1))
        got = Signal()
        byte = self.rx.payload
        m.d.comb += got.eq(self.rx.valid & self.rx.ready)

        # header bytes of the request, read from the payload buffer
        hdr = Array(Signal(8, name=f"hdr{i}") for i in range(8))
        hdr_len = Signal(4)
        rd_ptr = Signal(16)
        m.d.comb += brp.addr.eq(rd_ptr)

        # reply
        status = Signal(8)
        rlen = Signal(16)
        ri = Signal(16)
        mode = Signal(2)  # 0 rom, 1 read-back, 2 result
        rom = Array(Const(b, 8) for b in info.to_bytes())

        # write / read-back
        layer, region = Signal(4), Signal(2)
        addr = Signal(24)
        count = Signal(16)
        rem = Signal(16)
        word = Signal(8 * D)
        k = Signal(range(max(D, 8) + 1))
        sizes = Array(Const(s, 24) for lg, wcap in zip(geo.layers, self.capacities.weight_words)
                      for s in (wcap, lg.channels, lg.channels, 0))
        size = sizes[Cat(region, layer)]
        m.d.comb += [acc.cfg_layer.eq(layer), acc.cfg_region.eq(region), acc.cfg_addr.eq(addr),
                     acc.cfg_data.eq(word)]

        # sample: pixels of the open sample so far, the one being pushed
        pix_pos = Signal(range(n_pix + 1))
        pix = Signal(8)
        m.d.comb += acc.pixels.payload.eq(pix)
        sample_open = pix_pos != 0

        # the last result
        have_result = Signal()
        res_class, res_cycles = Signal(16), Signal(32)
        res_pots = [Signal(32, name=f"res_pot{i}") for i in range(K)]
        res_bytes_v = Cat(res_class, res_cycles, *res_pots)
        res_bytes = Array(res_bytes_v[8 * i:8 * i + 8] for i in range(len(res_bytes_v) // 8))

        def fail(code):
            m.d.sync += [status.eq(code), rlen.eq(0), self.errors.eq(self.errors + 1)]
            m.next = "T_SOF"

        def succeed(n_bytes=0, reply_mode=0):
            m.d.sync += [status.eq(proto.OK), rlen.eq(n_bytes), mode.eq(reply_mode)]
            m.next = "T_SOF"

        receiving = ("CMD", "LEN0", "LEN1", "PAYLOAD", "CRC0", "CRC1")
        with m.FSM(name="link") as fsm:
            with m.State("HUNT"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(got & (byte == proto.REQUEST_SOF)):
                    m.d.comb += crc_rx.start.eq(1)
                    m.next = "CMD"
            for name in receiving:
                with m.State(name):
                    m.d.comb += self.rx.ready.eq(1)
                    m.d.comb += [crc_rx.data.eq(byte), crc_rx.valid.eq(got)]
                    with m.If(got):
                        m.d.sync += timer.eq(0)
                    with m.Elif(timer == self.timeout_cycles):
                        m.d.sync += timer.eq(0)
                        fail(proto.E_TIMEOUT)
                    with m.Else():
                        m.d.sync += timer.eq(timer + 1)
                    with m.If(got):
                        if name == "CMD":
                            m.d.sync += cmd.eq(byte)
                            m.next = "LEN0"
                        elif name == "LEN0":
                            m.d.sync += length[:8].eq(byte)
                            m.next = "LEN1"
                        elif name == "LEN1":
                            total = Cat(length[:8], byte)
                            m.d.sync += [length[8:].eq(byte), idx.eq(0), oversize.eq(total > MAXP)]
                            with m.If(total == 0):
                                m.next = "CRC0"
                            with m.Else():
                                m.next = "PAYLOAD"
                        elif name == "PAYLOAD":
                            m.d.comb += [bwp.addr.eq(idx), bwp.data.eq(byte), bwp.en.eq(~oversize)]
                            m.d.sync += idx.eq(idx + 1)
                            with m.If(idx == length - 1):
                                m.next = "CRC0"
                        elif name == "CRC0":
                            m.next = "CRC1"
                        else:
                            m.next = "CHECK"

            with m.State("CHECK"):
                m.d.sync += [self.frames.eq(self.frames + 1), rd_ptr.eq(0), k.eq(0)]
                hl = Signal(4)
                with m.Switch(cmd):
                    for c, n in self.HEADER_BYTES.items():
                        with m.Case(c):
                            m.d.comb += hl.eq(n)
                m.d.sync += hdr_len.eq(Mux(length < hl, length, hl))
                with m.If(oversize):
                    fail(proto.E_LENGTH)
                with m.Elif(~crc_rx.match_detected):
                    fail(proto.E_CRC)
                with m.Else():
                    m.next = "HDR_FETCH"

            with m.State("HDR_FETCH"):  # brp.addr = rd_ptr; its byte arrives next cycle
                with m.If(rd_ptr == hdr_len):
                    m.next = "DISPATCH"
                with m.Else():
                    m.next = "HDR_TAKE"
            with m.State("HDR_TAKE"):
                m.d.sync += [hdr[rd_ptr[:3]].eq(brp.data), rd_ptr.eq(rd_ptr + 1)]
                m.next = "HDR_FETCH"

            with m.State("DISPATCH"):
                busy = acc.busy | sample_open
                m.d.sync += [layer.eq(hdr[0]), region.eq(hdr[1]), addr.eq(Cat(hdr[2], hdr[3], hdr[4])),
                             count.eq(0), rem.eq(length - proto.WRITE_HEADER)]
                with m.Switch(cmd):
                    with m.Case(proto.IDENTIFY):
                        with m.If(length != 0):
                            fail(proto.E_LENGTH)
                        with m.Else():
                            succeed(len(info.to_bytes()), 0)
                    with m.Case(proto.RESET):
                        with m.If(length != 0):
                            fail(proto.E_LENGTH)
                        with m.Else():
                            m.next = "RST0"
                    with m.Case(proto.BEGIN_LOAD):
                        with m.If(length != 4):
                            fail(proto.E_LENGTH)
                        with m.Elif(Cat(hdr[0], hdr[1], hdr[2], hdr[3]) != info.fingerprint):
                            fail(proto.E_MODEL)
                        with m.Else():
                            succeed()
                    with m.Case(proto.WRITE):
                        with m.If(length <= proto.WRITE_HEADER):
                            fail(proto.E_LENGTH)
                        with m.Elif((hdr[0] >= n_layers) | (hdr[1] > 2)):
                            fail(proto.E_RANGE)
                        with m.Elif(busy):
                            fail(proto.E_STATE)
                        with m.Else():
                            m.next = "WR_COUNT"
                    with m.Case(proto.READ):
                        n_words = Cat(hdr[5], hdr[6])
                        with m.If(length != proto.READ_PAYLOAD):
                            fail(proto.E_LENGTH)
                        with m.Elif((hdr[0] >= n_layers) | (hdr[1] > 2)):
                            fail(proto.E_RANGE)
                        with m.Elif((n_words == 0) | (n_words * D > MAXP)):
                            fail(proto.E_LENGTH)
                        with m.Elif(busy):
                            fail(proto.E_STATE)
                        with m.Else():
                            m.d.sync += count.eq(n_words)
                            m.next = "RD_CHECK"
                    with m.Case(proto.RUN):
                        offset = Cat(hdr[0], hdr[1])
                        with m.If(length <= proto.RUN_HEADER):
                            fail(proto.E_LENGTH)
                        with m.Elif(offset + length - proto.RUN_HEADER > n_pix):
                            fail(proto.E_LENGTH)
                        with m.Elif((offset != pix_pos) | acc.busy & ~sample_open):
                            fail(proto.E_STATE)
                        with m.Else():
                            m.d.sync += have_result.eq(0)
                            m.next = "CV_FETCH"
                    with m.Case(proto.RESULT):
                        with m.If(length != 0):
                            fail(proto.E_LENGTH)
                        with m.Elif(~have_result):
                            fail(proto.E_STATE)
                        with m.Else():
                            succeed(len(res_bytes), 2)
                    with m.Default():
                        fail(proto.E_UNKNOWN)

            # ---- RESET: the accelerator's registers, then an init scan of every membrane and current
            with m.State("RST0"):
                m.d.comb += accel_reset.eq(1)
                m.d.sync += [pix_pos.eq(0), have_result.eq(0)]
                m.next = "RST1"
            with m.State("RST1"):
                m.d.comb += acc.init_start.eq(1)
                m.next = "RST2"
            with m.State("RST2"):
                m.next = "RST3"
            with m.State("RST3"):
                with m.If(~acc.busy):
                    succeed()

            # ---- WRITE: count the words (no divider), check the range, then write them
            with m.State("WR_COUNT"):
                with m.If(rem >= D):
                    m.d.sync += [rem.eq(rem - D), count.eq(count + 1)]
                with m.Elif(rem != 0):
                    fail(proto.E_LENGTH)
                with m.Elif(addr + count > size):
                    fail(proto.E_RANGE)
                with m.Else():
                    m.next = "WR_FETCH"
            with m.State("WR_FETCH"):
                m.next = "WR_TAKE"
            with m.State("WR_TAKE"):
                m.d.sync += [word.eq(Cat(word[8:], brp.data)), rd_ptr.eq(rd_ptr + 1), k.eq(k + 1)]
                with m.If(k == D - 1):
                    m.next = "WR_COMMIT"
                with m.Else():
                    m.next = "WR_FETCH"
            with m.State("WR_COMMIT"):
                m.d.comb += acc.cfg_en.eq(1)
                m.d.sync += [addr.eq(addr + 1), count.eq(count - 1), k.eq(0)]
                with m.If(count == 1):
                    succeed()
                with m.Else():
                    m.next = "WR_FETCH"

            # ---- READ
            with m.State("RD_CHECK"):
                with m.If(addr + count > size):
                    fail(proto.E_RANGE)
                with m.Else():
                    succeed(count * D, 1)

            # ---- RUN: the chunk's pixels into the accelerator, one per cycle while it takes them
            with m.State("CV_FETCH"):  # brp.addr = rd_ptr; its byte arrives next cycle
                m.next = "CV_TAKE"
            with m.State("CV_TAKE"):
                m.d.sync += pix.eq(brp.data)
                m.next = "CV_PUSH"
            with m.State("CV_PUSH"):
                m.d.comb += acc.pixels.valid.eq(1)
                with m.If(acc.pixels.ready):
                    m.d.sync += [pix_pos.eq(pix_pos + 1), rd_ptr.eq(rd_ptr + 1)]
                    with m.If(rd_ptr + 1 == length):
                        m.next = "CHUNK_END"
                    with m.Else():
                        m.next = "CV_FETCH"
            with m.State("CHUNK_END"):
                with m.If(pix_pos == n_pix):
                    m.d.sync += pix_pos.eq(0)
                    m.next = "WAIT_RESULT"
                with m.Else():
                    succeed()
            with m.State("WAIT_RESULT"):
                with m.If(acc.result.valid):
                    m.d.comb += acc.result.ready.eq(1)
                    m.d.sync += [res_class.eq(acc.result.payload.label), res_cycles.eq(acc.result.payload.cycles),
                                 have_result.eq(1)]
                    for i in range(K):
                        m.d.sync += res_pots[i].eq(acc.result.payload.potentials[i])
                    succeed(len(res_bytes), 2)

            # ---- reply: SOF, status, length, payload, CRC (high byte first)
            tx_byte = Signal(8)
            sent = self.tx.valid & self.tx.ready
            m.d.comb += self.tx.payload.eq(tx_byte)
            with m.State("T_SOF"):
                m.d.comb += [self.tx.valid.eq(1), tx_byte.eq(proto.REPLY_SOF), crc_tx.start.eq(1)]
                m.d.sync += [ri.eq(0), k.eq(0)]
                with m.If(sent):
                    m.next = "T_STATUS"
            for name, value, nxt in (("T_STATUS", status, "T_LEN0"), ("T_LEN0", rlen[:8], "T_LEN1"),
                                     ("T_LEN1", rlen[8:], "T_PAY_PREP")):
                with m.State(name):
                    m.d.comb += [self.tx.valid.eq(1), tx_byte.eq(value), crc_tx.data.eq(value), crc_tx.valid.eq(sent)]
                    with m.If(sent):
                        m.next = nxt
            with m.State("T_PAY_PREP"):
                with m.If(ri == rlen):
                    m.next = "T_CRC0"
                with m.Elif((mode == 1) & (k == 0)):
                    m.next = "T_RFETCH"
                with m.Else():
                    m.next = "T_PAY"
            with m.State("T_RFETCH"):
                m.d.comb += acc.cfg_rd.eq(1)
                m.next = "T_RLATCH"
            with m.State("T_RLATCH"):
                m.d.sync += [word.eq(acc.cfg_rd_data), addr.eq(addr + 1)]
                m.next = "T_PAY"
            with m.State("T_PAY"):
                value = Signal(8)
                with m.Switch(mode):
                    with m.Case(0):
                        m.d.comb += value.eq(rom[ri])
                    with m.Case(1):
                        m.d.comb += value.eq(word[:8])
                    with m.Default():
                        m.d.comb += value.eq(res_bytes[ri])
                m.d.comb += [self.tx.valid.eq(1), tx_byte.eq(value), crc_tx.data.eq(value), crc_tx.valid.eq(sent)]
                with m.If(sent):
                    m.d.sync += [ri.eq(ri + 1), word.eq(word >> 8), k.eq(Mux(k == D - 1, 0, k + 1))]
                    m.next = "T_PAY_PREP"
            with m.State("T_CRC0"):
                m.d.comb += [self.tx.valid.eq(1), tx_byte.eq(crc_tx.crc[8:])]
                with m.If(sent):
                    m.next = "T_CRC1"
            with m.State("T_CRC1"):
                m.d.comb += [self.tx.valid.eq(1), tx_byte.eq(crc_tx.crc[:8])]
                with m.If(sent):
                    m.next = "HUNT"
        return m
