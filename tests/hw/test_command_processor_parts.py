"""The command processor's parts, each on its own in amaranth.sim: FrameReceiver, FrameTransmitter,
BufferReader, MemoryAccess, PixelFeeder, Dispatcher and IdentifyROM.

Every expectation is computed in Python from `qpsnn.sw.protocol` (``proto.request``, ``proto.reply``,
``proto.crc16``, ``proto.decode_result``), never from the RTL's own constants. Each bench is one testbench
that, every cycle, sets the part's inputs (random valid/ready gaps from a seeded generator), reads the
settled outputs, records the transfers (valid & ready) and ticks, so there is no ordering race between a
producer and a consumer.
"""
from __future__ import annotations

import random
import struct

import pytest
from amaranth import Elaboratable, Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from qpsnn.hw.buffer_reader import BufferReader
from qpsnn.hw.command_processor import IdentifyROM
from qpsnn.hw.dispatcher import Body, Dispatcher, Route
from qpsnn.hw.frame_receiver import FrameReceiver
from qpsnn.hw.frame_transmitter import FrameTransmitter
from qpsnn.hw.memory_access import MemoryAccess
from qpsnn.hw.pixel_feeder import PixelFeeder
from qpsnn.sw import protocol as proto


def simulate(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


class WithMemory(Elaboratable):
    """A part with a frame buffer: ``write`` connects the part's ``buf`` to the write port, else its ``port``
    to the read port."""

    def __init__(self, part, depth: int, init=(), write: bool = True):
        self.part, self.write = part, write
        self.mem = Memory(shape=8, depth=depth, init=list(init))

    def elaborate(self, platform):
        m = Module()
        m.submodules.part, m.submodules.mem = self.part, self.mem
        if self.write:
            wiring.connect(m, self.part.buf, self.mem.write_port())
        else:
            wiring.connect(m, self.part.port, self.mem.read_port())
        return m


# ---------------------------------------------------------------------------------------------- FrameReceiver

FILL = 0xEE  # the buffer's contents before any frame: a byte that no test payload starts with


def receive(data: bytes, *, max_payload=16, timeout=1000, hold=0, frames=1, seed=0, gap=0.3, idle=None):
    """Feed ``data`` on rx (a gap with probability ``gap`` before each byte), take ``frames`` frames, each
    ``hold`` cycles after it is offered. Returns a dict: the frames (code, tag, length, status, the buffer's
    first bytes when it was offered, cycle offered), every buffer write, the cycle of each byte taken, and
    whether rx was ever ready while a frame waited."""
    top = WithMemory(FrameReceiver(max_payload, timeout), max_payload, [FILL] * max_payload)
    dut = top.part
    rng = random.Random(seed)
    out = {"frames": [], "writes": [], "taken_at": [], "rx_ready_while_waiting": False}
    limit = 40 * len(data) + 3 * timeout + 50 * hold + 200 if idle is None else idle

    async def bench(ctx):
        i, offered_at, snapshot = 0, None, None
        for cycle in range(limit):
            offer = i < len(data) and rng.random() >= gap
            ctx.set(dut.rx.valid, offer)
            ctx.set(dut.rx.payload, data[i] if offer else rng.randrange(256))
            valid = ctx.get(dut.frame.valid)
            if valid and offered_at is None:
                offered_at = cycle
                snapshot = bytes(ctx.get(top.mem.data[a]) for a in range(max_payload))
            take = bool(valid and cycle >= offered_at + hold)
            ctx.set(dut.frame.ready, take)
            if valid and not take and ctx.get(dut.rx.ready):
                out["rx_ready_while_waiting"] = True
            if offer and ctx.get(dut.rx.ready):
                out["taken_at"].append(cycle)
                i += 1
            if ctx.get(dut.buf.en):
                out["writes"].append((ctx.get(dut.buf.addr), ctx.get(dut.buf.data)))
            if take:
                p = dut.frame.payload
                out["frames"].append({"code": ctx.get(p.header.code), "tag": ctx.get(p.header.tag),
                                      "length": ctx.get(p.header.length), "status": ctx.get(p.status),
                                      "buffer": snapshot, "at": offered_at})
                offered_at = None
                if len(out["frames"]) == frames and i == len(data):
                    return
            await ctx.tick()

    simulate(top, bench)
    return out


def test_receiver_takes_a_write_request_through_noise_and_gaps():
    payload = bytes([0x01, 0x02, 0xA5, 0x00, 0x5A, 0xFF, 0x10, 0x20, 0x30, 0x40, 0x7F])
    req = proto.request(proto.WRITE, payload, tag=0x5C)
    got = receive(b"\x00\x13\xff\x5a\x3c" + req, gap=0.35)
    assert len(got["frames"]) == 1
    f = got["frames"][0]
    assert (f["code"], f["tag"], f["length"], f["status"]) == (proto.WRITE, 0x5C, len(payload), proto.OK)
    assert f["buffer"][:len(payload)] == payload
    assert f["buffer"][len(payload):] == bytes([FILL]) * (16 - len(payload))  # nothing past the payload
    assert [a for a, _ in got["writes"]] == list(range(len(payload)))


def test_receiver_reports_a_flipped_payload_bit_as_crc_error():
    payload = bytes(range(3, 13))
    req = bytearray(proto.request(proto.WRITE, payload, tag=0x5C))
    req[1 + 4 + 6] ^= 0x08  # one bit of the seventh payload byte
    f, = receive(bytes(req), seed=1)["frames"]
    assert (f["code"], f["tag"], f["length"], f["status"]) == (proto.WRITE, 0x5C, len(payload), proto.E_CRC)


def test_receiver_refuses_an_oversized_payload_without_touching_the_buffer():
    payload = bytes((7 * i + 1) & 0xFF for i in range(21))  # > max_payload = 16, with a correct CRC
    got = receive(proto.request(proto.WRITE, payload, tag=0x21), seed=2)
    f, = got["frames"]
    assert (f["tag"], f["length"], f["status"]) == (0x21, 21, proto.E_LENGTH)
    assert got["writes"] == []
    assert f["buffer"] == bytes([FILL]) * 16


def test_receiver_times_out_on_a_cut_frame():
    timeout = 50
    req = proto.request(proto.WRITE, bytes(range(10)), tag=0x44)
    got = receive(req[:9], timeout=timeout, seed=3, gap=0.0)
    f, = got["frames"]
    assert (f["code"], f["tag"], f["status"]) == (proto.WRITE, 0x44, proto.E_TIMEOUT)
    silence = f["at"] - got["taken_at"][-1]
    assert timeout <= silence <= timeout + 4, silence


def test_receiver_waits_while_a_finished_frame_is_not_taken():
    first = proto.request(proto.WRITE, bytes([0x11, 0x22, 0x33]), tag=0x01)
    second = proto.request(proto.READ, bytes([0x99, 0x88, 0x77, 0x66, 0x55]), tag=0x02)
    got = receive(first + second, frames=2, hold=30, seed=4, gap=0.2)
    assert not got["rx_ready_while_waiting"]
    a, b = got["frames"]
    assert (a["code"], a["tag"], a["status"], a["buffer"][:3]) == (proto.WRITE, 1, proto.OK, b"\x11\x22\x33")
    # not one byte of the second frame was lost while the first waited
    assert (b["code"], b["tag"], b["status"], b["buffer"][:5]) == (proto.READ, 2, proto.OK, second[5:10])


def test_receiver_takes_a_payload_of_exactly_max_payload():
    payload = random.Random(15).randbytes(16)
    got = receive(proto.request(proto.RUN, payload, tag=0x3A), seed=7)
    f, = got["frames"]
    assert (f["code"], f["tag"], f["length"], f["status"]) == (proto.RUN, 0x3A, 16, proto.OK)
    assert f["buffer"] == payload


def test_receiver_takes_an_empty_request():
    f, = receive(proto.request(proto.IDENTIFY, tag=0xE7), seed=5)["frames"]
    assert (f["code"], f["tag"], f["length"], f["status"]) == (proto.IDENTIFY, 0xE7, 0, proto.OK)


@pytest.mark.parametrize("how", ["crc over other bytes", "crc byte order swapped", "correct (control)"])
def test_receiver_checks_the_crc_broken_on_purpose(how):
    """A CRC computed over different bytes (or sent low byte first) must be refused: a receiver that
    ignored the CRC would report OK here. The control case proves the same frame passes with its real CRC."""
    payload = b"\x10\x20\x30\x40\x50\x60"
    body = proto.pack_fields(proto.FRAME_HEADER, code=proto.WRITE, tag=0x5C, length=len(payload)) + payload
    crc = proto.crc16(body)
    assert crc >> 8 != crc & 0xFF  # so that swapping the bytes changes the frame
    if how == "crc over other bytes":
        tail = struct.pack(">H", proto.crc16(body[:-1] + b"\x61"))
    elif how == "crc byte order swapped":
        tail = struct.pack("<H", crc)
    else:
        tail = struct.pack(">H", crc)
    f, = receive(bytes([proto.REQUEST_SOF]) + body + tail, seed=6)["frames"]
    assert f["status"] == (proto.OK if how.startswith("correct") else proto.E_CRC)


# ------------------------------------------------------------------------------------------- FrameTransmitter

@pytest.mark.parametrize("status, tag, body, seed", [
    (proto.OK, 0x5C, bytes([0x00, 0x5A, 0xA5, 0xFF]) + bytes(range(1, 20)), 0),
    (proto.E_RANGE, 0xC3, b"", 1),
    (proto.OK, 0x00, b"\x42", 2),
])
def test_transmitter_frames_a_reply_with_stalls(status, tag, body, seed):
    dut = FrameTransmitter()
    rng = random.Random(seed)
    expected = proto.reply(status, body, tag)
    sent, readies, body_taken = [], [], [0]

    async def bench(ctx):
        ctx.set(dut.reply.payload, {"code": status, "tag": tag, "length": len(body)})
        for cycle in range(40 * len(expected) + 50):
            ctx.set(dut.reply.valid, 1)
            i = body_taken[0]
            if i < len(body):
                bv = rng.random() < 0.6
                ctx.set(dut.body.valid, bv)
                ctx.set(dut.body.payload, body[i] if bv else rng.randrange(256))
            else:  # past the body a source keeps offering (as the CP's always-valid sources do): never taken
                ctx.set(dut.body.valid, 1)
                ctx.set(dut.body.payload, 0xEE)
            ready = rng.random() < 0.6
            ctx.set(dut.tx.ready, ready)
            if ctx.get(dut.tx.valid) and ready:
                sent.append(ctx.get(dut.tx.payload))
            if ctx.get(dut.body.valid) and ctx.get(dut.body.ready):
                body_taken[0] += 1
            if ctx.get(dut.reply.ready):
                readies.append((len(sent), ctx.get(dut.tx.valid) and ready))
                break
            await ctx.tick()
        ctx.set(dut.reply.valid, 0)
        for _ in range(10):  # nothing more once the reply is done
            await ctx.tick()
            if ctx.get(dut.tx.valid) and ctx.get(dut.tx.ready):
                sent.append(ctx.get(dut.tx.payload))

    simulate(dut, bench)
    assert bytes(sent) == expected
    assert readies == [(len(expected), True)]  # taken once, with the last CRC byte's transfer
    assert body_taken[0] == len(body)
    parser = proto.ReplyParser()
    parser.feed(bytes(sent))
    assert parser.take() == proto.Reply(status, body, tag)


# ----------------------------------------------------------------------------------------------- BufferReader

def test_buffer_reader_streams_and_restarts():
    content = bytes(random.Random(7).randbytes(32))
    assert len(set(content)) > 20  # distinct enough that a byte out of place shows
    top = WithMemory(BufferReader(32), 32, content, write=False)
    dut = top.part
    rng = random.Random(8)
    runs, cycles = [], []

    async def stream(ctx, length, stop_after=None, extra=12, stall=0.4):
        ctx.set(dut.bytes.ready, 0)
        ctx.set(dut.start, 1)
        ctx.set(dut.length, length)
        await ctx.tick()
        ctx.set(dut.start, 0)
        got, idle, cycle = [], 0, 0
        while idle < extra and (stop_after is None or len(got) < stop_after):
            ready = rng.random() >= stall
            ctx.set(dut.bytes.ready, ready)
            valid = ctx.get(dut.bytes.valid)
            if valid and ready:
                got.append(ctx.get(dut.bytes.payload))
                cycle_of_last = cycle
            if len(got) >= length:
                idle += 1
            await ctx.tick()
            cycle += 1
        ctx.set(dut.bytes.ready, 0)
        runs.append(bytes(got))
        cycles.append(cycle_of_last + 1)

    async def bench(ctx):
        await stream(ctx, 20, stop_after=5)  # cut off part way ...
        await stream(ctx, 12)  # ... a new start begins at byte 0 again
        await stream(ctx, 1)
        await stream(ctx, 32)
        await stream(ctx, 17, stall=0)  # a consumer that never stalls gets a byte every cycle
        await stream(ctx, 9, stop_after=3, stall=0)
        await stream(ctx, 9, stall=0)

    simulate(top, bench)
    assert runs == [content[:5], content[:12], content[:1], content, content[:17], content[:3], content[:9]]
    assert cycles[4] == 17 and cycles[6] == 9


# ----------------------------------------------------------------------------------------------- MemoryAccess

SIZES = [[8, 4, 4], [16, 2, 2]]  # words per [layer][region]
D = 3  # bytes per word: not a power of two, so the counting by subtraction is exercised


def access(request: dict, write_bytes: bytes = b"", memory: dict | None = None, seed=0):
    """Run one request; returns (done payloads, cfg writes, cfg read addresses, read_data bytes)."""
    dut = MemoryAccess(SIZES, D, 8 * D)
    rng = random.Random(seed)
    memory = dict(memory or {})
    out = {"done": [], "writes": [], "reads": [], "read_data": [], "write_taken": 0}
    req = {"read": 0, "layer": 0, "region": 0, "addr": 0, "count": 0, "payload_bytes": 0, **request}

    async def bench(ctx):
        ctx.set(dut.request.payload, req)
        pending, requested, idle = None, False, 0
        for cycle in range(2000):
            # the configuration port answers a read on the next cycle; otherwise rd_data is junk
            ctx.set(dut.cfg.rd_data, pending if pending is not None else rng.randrange(1 << (8 * D)))
            pending = None
            ctx.set(dut.request.valid, not requested)
            if not requested and ctx.get(dut.request.ready):
                requested = True
            i = out["write_taken"]
            wv = i < len(write_bytes) and rng.random() < 0.6
            ctx.set(dut.write_data.valid, wv)
            ctx.set(dut.write_data.payload, write_bytes[i] if wv else rng.randrange(256))
            if wv and ctx.get(dut.write_data.ready):
                out["write_taken"] += 1
            done_ready = rng.random() < 0.7
            ctx.set(dut.done.ready, done_ready)
            if ctx.get(dut.done.valid) and done_ready:
                out["done"].append((ctx.get(dut.done.payload.status), ctx.get(dut.done.payload.length)))
            rd_ready = rng.random() < 0.6
            ctx.set(dut.read_data.ready, rd_ready)
            if ctx.get(dut.read_data.valid) and rd_ready:
                out["read_data"].append(ctx.get(dut.read_data.payload))
            key = (ctx.get(dut.cfg.layer), ctx.get(dut.cfg.region), ctx.get(dut.cfg.addr))
            if ctx.get(dut.cfg.en):
                out["writes"].append((*key, ctx.get(dut.cfg.data)))
                memory[key] = ctx.get(dut.cfg.data)
            if ctx.get(dut.cfg.rd):
                out["reads"].append(key)
                pending = memory.get(key, 0)
            idle = idle + 1 if out["done"] and ctx.get(dut.request.ready) else 0
            if idle > 10:
                break
            await ctx.tick()

    simulate(dut, bench)
    return out


def words_le(words):
    return b"".join(w.to_bytes(D, "little") for w in words)


def test_memory_access_writes_whole_words():
    words = [0x123456, 0xABCDEF, 0x000001, 0xFF0080]
    got = access({"layer": 1, "region": proto.REGION_WEIGHTS, "addr": 5, "payload_bytes": len(words) * D},
                 words_le(words), seed=1)
    assert got["writes"] == [(1, proto.REGION_WEIGHTS, 5 + i, w) for i, w in enumerate(words)]
    assert got["done"] == [(proto.OK, 0)]
    assert got["write_taken"] == len(words) * D


def test_memory_access_refuses_a_partial_word_without_writing():
    got = access({"layer": 0, "region": proto.REGION_WEIGHTS, "addr": 0, "payload_bytes": 2 * D + 1},
                 bytes(range(1, 2 * D + 2)), seed=2)
    assert got["done"] == [(proto.E_LENGTH, 0)]
    assert got["writes"] == []


@pytest.mark.parametrize("addr, n, status", [(1, 2, proto.E_RANGE), (0, 3, proto.E_RANGE), (0, 2, proto.OK)])
def test_memory_access_checks_the_region_size_before_writing(addr, n, status):
    words = [0x0A0B0C, 0x0D0E0F, 0x102030][:n]
    got = access({"layer": 1, "region": proto.REGION_THRESHOLD, "addr": addr, "payload_bytes": n * D},
                 words_le(words), seed=3)
    assert got["done"] == [(status, 0)]
    expected = [(1, proto.REGION_THRESHOLD, addr + i, w) for i, w in enumerate(words)] if status == proto.OK else []
    assert got["writes"] == expected


def test_memory_access_reads_words_little_endian():
    memory = {(0, proto.REGION_BIAS, a): 0x10203 * (a + 1) + 0xA00000 for a in range(4)}
    got = access({"read": 1, "layer": 0, "region": proto.REGION_BIAS, "addr": 1, "count": 3}, memory=memory, seed=4)
    assert got["done"] == [(proto.OK, 3 * D)]
    assert got["reads"] == [(0, proto.REGION_BIAS, a) for a in (1, 2, 3)]
    assert bytes(got["read_data"]) == words_le([memory[(0, proto.REGION_BIAS, a)] for a in (1, 2, 3)])
    assert got["writes"] == []


def test_memory_access_refuses_a_read_past_the_region():
    got = access({"read": 1, "layer": 0, "region": proto.REGION_BIAS, "addr": 2, "count": 3}, seed=5)
    assert got["done"] == [(proto.E_RANGE, 0)]
    assert got["reads"] == [] and got["read_data"] == []


# ----------------------------------------------------------------------------------------------- PixelFeeder

async def read_body(ctx, dut, n_bytes: int, rng, tick=None) -> bytes:
    """A reply body from its first byte (``restart``), ``n_bytes`` of it taken with a random ``ready``;
    ``tick``: the clock edge, where the bench models what happens on it."""
    tick = tick or ctx.tick
    ctx.set(dut.restart, 1)
    await tick()
    ctx.set(dut.restart, 0)
    out = []
    while len(out) < n_bytes:
        r = rng.random() < 0.5
        ctx.set(dut.body.ready, r)
        if r and ctx.get(dut.body.valid):
            out.append(ctx.get(dut.body.payload))
        await tick()
    ctx.set(dut.body.ready, 0)
    return bytes(out)


def test_pixel_feeder_feeds_chunks_and_returns_the_result():
    n_pixels, classes, value_bits = 10, 3, 12
    dut = PixelFeeder(n_pixels, classes, value_bits)
    rng = random.Random(9)
    pixels = bytes(rng.randrange(256) for _ in range(n_pixels))
    label, cycles, potentials = 2, 0x01E240AB, [-5, 100, -(1 << (value_bits - 1))]
    log = {"pixels": [], "done": [], "positions": [], "early_done": False, "have_result": []}

    async def chunk(ctx, data: bytes, tail: bytes):
        """Offer a chunk of len(data) pixels, then its bytes (and more after them, never to be taken)."""
        ctx.set(dut.chunk.payload, len(data))
        ctx.set(dut.chunk.valid, 1)
        await ctx.tick().until(dut.chunk.ready)
        ctx.set(dut.chunk.valid, 0)
        src, i = data + tail, 0
        for _ in range(400):
            v = i < len(src) and rng.random() < 0.7
            ctx.set(dut.data.valid, v)
            ctx.set(dut.data.payload, src[i] if v else 0)
            r = rng.random() < 0.6
            ctx.set(dut.pixels.ready, r)
            if ctx.get(dut.pixels.valid) and r:
                log["pixels"].append(ctx.get(dut.pixels.payload))
            if v and ctx.get(dut.data.ready):
                i += 1
            if ctx.get(dut.done.valid):
                ctx.set(dut.done.ready, 1)
                log["done"].append(ctx.get(dut.done.payload.sample_done))
                await ctx.tick()
                ctx.set(dut.done.ready, 0)
                ctx.set(dut.data.valid, 0)
                return i
            if len(log["pixels"]) == sum(map(len, chunks_sent)) and ctx.get(dut.result.ready):
                return i  # the sample is in: the feeder waits for the result
            await ctx.tick()
        return i

    chunks_sent = []

    async def bench(ctx):
        chunks_sent.append(pixels[:4])
        taken = await chunk(ctx, pixels[:4], b"\xEE\xEE")
        assert taken == 4
        log["positions"].append(ctx.get(dut.position))
        chunks_sent.append(pixels[4:])
        await chunk(ctx, pixels[4:], b"")
        for _ in range(20):  # no result yet: no done
            if ctx.get(dut.done.valid):
                log["early_done"] = True
            await ctx.tick()
        log["have_result"].append(ctx.get(dut.have_result))
        ctx.set(dut.result.payload, {"label": label, "cycles": cycles, "potentials": potentials})
        ctx.set(dut.result.valid, 1)
        assert ctx.get(dut.result.ready)  # the feeder is waiting for it
        await ctx.tick()
        ctx.set(dut.result.valid, 0)
        ctx.set(dut.result.payload, {"label": label, "cycles": 0, "potentials": potentials})  # the accelerator holds all but cycles
        for _ in range(20):
            if ctx.get(dut.done.valid):
                log["done"].append(ctx.get(dut.done.payload.sample_done))
                ctx.set(dut.done.ready, 1)
                await ctx.tick()
                break
            await ctx.tick()
        ctx.set(dut.done.ready, 0)
        log["positions"].append(ctx.get(dut.position))
        log["have_result"].append(ctx.get(dut.have_result))
        held = list(potentials)  # the accelerator's potentials, rotated when the feeder says so

        async def tick():  # a clock edge, as the accelerator sees it
            if ctx.get(dut.rotate):
                held[:] = held[1:] + held[:1]
            await ctx.tick()
            ctx.set(dut.result.payload.potentials, held)

        async def body(n_bytes):
            return await read_body(ctx, dut, n_bytes, rng, tick)

        log["body"] = await body(dut.result_bytes)
        log["again"] = await body(dut.result_bytes)  # a RESULT: the same bytes, the potentials back in order
        log["cut"] = await body(proto.RESULT_FIXED + 4 * 1 + 3)  # a reply cut short in the second potential
        log["after_cut"] = await body(dut.result_bytes)
        for _ in range(classes):
            await tick()
        log["held"] = list(held)

    simulate(dut, bench)
    assert bytes(log["pixels"]) == pixels
    assert log["positions"] == [4, 0]
    assert log["done"] == [0, 1]
    assert not log["early_done"]
    assert log["have_result"] == [0, 1]
    assert proto.decode_result(log["body"], classes) == (label, cycles, potentials)
    assert log["again"] == log["after_cut"] == log["body"]
    assert log["cut"] == log["body"][:len(log["cut"])]
    assert log["held"] == potentials  # a whole body leaves them in class order for the next sample's scan


# ------------------------------------------------------------------------------------------------- Dispatcher

N_LAYERS, N_PIXELS, WB, MAX_PAYLOAD, ID_BYTES, RESULT_BYTES, FINGERPRINT = 2, 20, 2, 64, 30, 18, 0x1234ABCD


def dispatch(code: int, payload: bytes = b"", tag: int = 0, status=proto.OK, *, position=0, have_result=0,
             access_done=(proto.OK, 0), busy_after_init=0, seed=0):
    """One frame through the dispatcher; its payload streams from a Python model of the buffer reader.
    Returns the reply header, the body source, and what the dispatcher asked of the other parts."""
    dut = Dispatcher(N_LAYERS, N_PIXELS, WB, MAX_PAYLOAD, ID_BYTES, RESULT_BYTES, FINGERPRINT)
    rng = random.Random(seed)
    out = {"replies": [], "access": [], "chunk": [], "accel_reset": False, "frame_taken": 0, "read_starts": 0,
           "init_at": None, "reply_at": None}

    async def bench(ctx):
        ctx.set(dut.frame.payload, {"header": {"code": code, "tag": tag, "length": len(payload)}, "status": status})
        ctx.set(dut.frame.valid, 1)
        ctx.set(dut.position, position)
        ctx.set(dut.have_result, have_result)
        pointer, primed, waiting = 0, False, 0
        for cycle in range(300):
            v = primed and pointer < len(payload) and rng.random() < 0.7
            ctx.set(dut.payload.valid, v)
            ctx.set(dut.payload.payload, payload[pointer] if v else rng.randrange(256))
            if ctx.get(dut.route) != Route.HEADER:
                ctx.set(dut.payload.valid, 0)
                v = False
            ctx.set(dut.access.ready, 1)
            ctx.set(dut.chunk.ready, 1)
            if ctx.get(dut.access.valid):
                p = dut.access.payload
                out["access"].append({k: ctx.get(getattr(p, k)) for k in ("read", "layer", "region", "addr",
                                                                           "count", "payload_bytes")})
            if ctx.get(dut.chunk.valid):
                out["chunk"].append(ctx.get(dut.chunk.payload))
            ctx.set(dut.access_done.valid, bool(out["access"]))
            ctx.set(dut.access_done.payload, {"status": access_done[0], "length": access_done[1]})
            ctx.set(dut.chunk_done.valid, bool(out["chunk"]))
            ctx.set(dut.chunk_done.payload, {"sample_done": 0})
            out["accel_reset"] |= bool(ctx.get(dut.accel_reset))
            if ctx.get(dut.init_start):
                out["init_at"] = cycle
            # the accelerator is busy for a while after an init scan starts
            ctx.set(dut.busy, out["init_at"] is not None and cycle < out["init_at"] + busy_after_init)
            waiting = waiting + 1 if ctx.get(dut.reply.valid) else 0
            ctx.set(dut.reply.ready, waiting > 3)  # the transmitter takes its time
            if v and ctx.get(dut.payload.ready):
                pointer += 1
            if ctx.get(dut.read_start):
                out["read_starts"] += 1
                pointer, primed = 0, True
            if ctx.get(dut.frame.ready):
                out["frame_taken"] += 1
            if ctx.get(dut.reply.valid) and waiting > 3:
                r = dut.reply.payload
                out["replies"].append((ctx.get(r.code), ctx.get(r.tag), ctx.get(r.length), ctx.get(dut.body)))
                out["reply_at"] = cycle - waiting + 1  # the cycle the reply was first offered
                await ctx.tick()
                ctx.set(dut.frame.valid, 0)
                ctx.set(dut.reply.ready, 0)
                for _ in range(5):  # nothing more without a frame
                    if ctx.get(dut.reply.valid) or ctx.get(dut.access.valid) or ctx.get(dut.chunk.valid):
                        out["replies"].append("spurious")
                    await ctx.tick()
                return
            await ctx.tick()

    simulate(dut, bench)
    return out


def write_payload(layer, region=proto.REGION_WEIGHTS, addr=3, words=(0x1234, 0xBEEF)):
    return proto.write_payload(layer, region, addr, list(words), WB)


def test_dispatcher_identify():
    got = dispatch(proto.IDENTIFY, tag=0x5C, seed=1)
    assert got["replies"] == [(proto.OK, 0x5C, ID_BYTES, Body.IDENTIFY)]
    assert got["frame_taken"] == 1
    got = dispatch(proto.IDENTIFY, b"\x00", tag=0x5D, seed=2)  # IDENTIFY takes no payload
    assert got["replies"][0][:3] == (proto.E_LENGTH, 0x5D, 0)


def test_dispatcher_result_without_a_result_is_out_of_sequence():
    assert dispatch(proto.RESULT, tag=0x31, seed=3)["replies"] == [(proto.E_STATE, 0x31, 0, Body.RESULT)]
    # control: with a kept result the same request is answered with it
    assert dispatch(proto.RESULT, tag=0x32, have_result=1, seed=4)["replies"] == [
        (proto.OK, 0x32, RESULT_BYTES, Body.RESULT)]


@pytest.mark.parametrize("code", [0x00, 0x08, 0x7E, 0xFF])
def test_dispatcher_unknown_command(code):
    got = dispatch(code, b"\x01\x02", tag=code ^ 0x5A, seed=code)
    assert [r[:3] for r in got["replies"]] == [(proto.E_UNKNOWN, code ^ 0x5A, 0)]
    assert got["access"] == [] and got["chunk"] == []


@pytest.mark.parametrize("status", [proto.E_CRC, proto.E_LENGTH, proto.E_TIMEOUT])
def test_dispatcher_echoes_a_receive_error_and_acts_on_nothing(status):
    got = dispatch(proto.WRITE, write_payload(0), tag=0x9C, status=status, seed=5)
    assert [r[:3] for r in got["replies"]] == [(status, 0x9C, 0)]
    assert got["access"] == [] and got["read_starts"] == 0 and got["frame_taken"] == 1


def test_dispatcher_write_to_a_missing_layer_is_refused_before_any_access():
    got = dispatch(proto.WRITE, write_payload(N_LAYERS), tag=0x66, seed=6)
    assert [r[:3] for r in got["replies"]] == [(proto.E_RANGE, 0x66, 0)]
    assert got["access"] == []
    got = dispatch(proto.WRITE, write_payload(0, region=3), tag=0x67, seed=7)  # no region 3 either
    assert [r[:3] for r in got["replies"]] == [(proto.E_RANGE, 0x67, 0)]
    assert got["access"] == []


def test_dispatcher_write_in_range_goes_to_the_memory_access():
    payload = write_payload(N_LAYERS - 1, proto.REGION_BIAS, 0x012345)
    got = dispatch(proto.WRITE, payload, tag=0x68, access_done=(proto.OK, 0), seed=8)
    assert got["access"][0] == {"read": 0, "layer": N_LAYERS - 1, "region": proto.REGION_BIAS, "addr": 0x012345,
                                "count": 0, "payload_bytes": len(payload) - proto.WRITE_HEADER}
    assert len(got["access"]) == 1
    assert got["replies"] == [(proto.OK, 0x68, 0, Body.MEMORY)]


def test_dispatcher_refuses_memory_access_while_a_sample_is_open():
    got = dispatch(proto.WRITE, write_payload(0), tag=0x6A, position=5, seed=14)
    assert [r[:3] for r in got["replies"]] == [(proto.E_STATE, 0x6A, 0)]
    assert got["access"] == []


def test_dispatcher_reset_waits_for_the_init_scan():
    got = dispatch(proto.RESET, tag=0x6B, busy_after_init=40, seed=15)
    assert got["accel_reset"] and got["init_at"] is not None
    assert [r[:3] for r in got["replies"]] == [(proto.OK, 0x6B, 0)]
    assert got["reply_at"] >= got["init_at"] + 40


def test_dispatcher_read_answers_with_the_access_length():
    got = dispatch(proto.READ, proto.read_payload(1, proto.REGION_THRESHOLD, 7, 5), tag=0x69,
                   access_done=(proto.OK, 5 * WB), seed=9)
    assert got["access"] == [{"read": 1, "layer": 1, "region": proto.REGION_THRESHOLD, "addr": 7, "count": 5,
                               "payload_bytes": (proto.READ_PAYLOAD - proto.WRITE_HEADER)}]
    assert got["replies"] == [(proto.OK, 0x69, 5 * WB, Body.MEMORY)]


def test_dispatcher_run_at_the_wrong_offset_is_out_of_sequence():
    got = dispatch(proto.RUN, proto.run_payload(4, b"\x01\x02\x03"), tag=0x70, position=0, seed=10)
    assert [r[:3] for r in got["replies"]] == [(proto.E_STATE, 0x70, 0)]
    assert got["chunk"] == []
    # control: at the right offset the chunk goes to the feeder
    got = dispatch(proto.RUN, proto.run_payload(4, b"\x01\x02\x03"), tag=0x71, position=4, seed=11)
    assert got["chunk"] == [3]
    assert [r[:3] for r in got["replies"]] == [(proto.OK, 0x71, 0)]


def test_dispatcher_begin_load_checks_the_fingerprint():
    got = dispatch(proto.BEGIN_LOAD, proto.fingerprint_bytes(FINGERPRINT ^ 0x100), tag=0x80, seed=12)
    assert [r[:3] for r in got["replies"]] == [(proto.E_MODEL, 0x80, 0)]
    got = dispatch(proto.BEGIN_LOAD, proto.fingerprint_bytes(FINGERPRINT), tag=0x81, seed=13)
    assert [r[:3] for r in got["replies"]] == [(proto.OK, 0x81, 0)]


# ------------------------------------------------------------------------------------------------ IdentifyROM

def test_identify_rom_restarts_at_the_first_byte():
    record = proto.DeviceInfo(proto.VERSION, 4, 3, 10, 16, 2, 64, 0xDEADBEEF, (1, 8, 8),
                              (proto.LayerInfo("conv", 4, 8, 72, 256), proto.LayerInfo("fc", 4, 10, 640, 10))).to_bytes()
    dut = IdentifyROM(record)
    rng = random.Random(14)
    runs = []

    async def read(ctx, n):
        runs.append(await read_body(ctx, dut, n, rng))

    async def bench(ctx):
        await read(ctx, 7)
        await read(ctx, len(record))
        await read(ctx, len(record))

    simulate(dut, bench)
    assert runs == [record[:7], record, record]
    assert proto.DeviceInfo.from_bytes(runs[1]).fingerprint == 0xDEADBEEF
