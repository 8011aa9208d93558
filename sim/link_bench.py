"""cocotb bench of the host link on the UART top level: provokes every error reply on purpose, recovers from
a frame cut mid-way, then fuzzes in episodes. In each, a client sends random, mutated and well-formed
frames (WRITE, RUN, RESET with random valid headers, whole or cut), reading the replies or not, and leaves
at a random byte; a fresh client then resynchronises as the driver does, identifies, loads the model and
classifies a sample, which must match the golden model exactly. Afterwards, samples classify exactly.

Everything runs in simulated time (no sockets), so it is deterministic for a seed. The job comes in the file
$QPSNN_BENCH_JOB; the report goes to its ``out`` file.
"""
from __future__ import annotations

import json
import os
import random
import struct

import cocotb
import numpy as np
import torch
from cocotb.triggers import Timer

from qpsnn.sw import modelfile
from qpsnn.sw import protocol as proto
from qpsnn.sw.device import model_words, run_payloads, write_payloads
from qpsnn.sw.golden import run_golden

from .serve import write_progress
from .serve_bench import _reset
from .uart_model import UARTHostModel

EPISODE_FRAMES = 50  # frames a fuzzing client sends before it leaves, on average
LENGTH_AT = 1 + proto.field_bytes(proto.FRAME_HEADER[:2])  # the length field's offset in a frame


class Link:
    def __init__(self, dut, divisor: int, timeout_bytes: int):
        self.uart = UARTHostModel(dut, divisor)
        self.timeout_bytes = timeout_bytes
        self.parser = proto.ReplyParser()
        self.bad_replies = self.stale_replies = 0
        self.tag = 0

    def leave(self) -> None:
        """The client goes: what it queued is never sent, what came back is never read."""
        self.uart.flush()
        self.parser = proto.ReplyParser()

    async def replies(self, limit_bytes: int, want: int = 1, tag: int | None = None) -> list:
        """Replies that arrive within ``limit_bytes`` byte times after the last byte sent (stops at ``want``);
        with ``tag``, only those that echo it (the others are counted as stale)."""
        got = []
        await self.uart.idle.wait()
        step = self.uart.byte_ns * 8
        for _ in range(max(1, limit_bytes // 8)):
            await Timer(step, unit="ns")
            self.parser.feed(self.uart.take())
            while (r := self.parser.take()) is not None:
                if r.status is None:
                    self.bad_replies += 1
                elif tag is not None and r.tag != tag:
                    self.stale_replies += 1
                else:
                    got.append(r)
            if len(got) >= want:
                break
        return got

    async def request(self, cmd: int, payload: bytes = b"", raw: bytes | None = None) -> proto.Reply | None:
        """One frame (tagged, or ``raw`` as it is) and the first reply with its tag; None if none came."""
        self.tag = (self.tag + 1) % 256
        frame = raw if raw is not None else proto.request(cmd, payload, self.tag)
        tag = frame[2] if len(frame) > 2 else None
        self.uart.send(frame)
        for r in await self.replies(self.timeout_bytes + 2 * 1100 + 400, want=1, tag=tag):
            return r
        return None

    async def call(self, cmd: int, payload: bytes = b"", tries: int = 4) -> proto.Reply | None:
        """What the driver does (`qpsnn.sw.device.Device.request`): the same frame again while no usable reply."""
        self.tag = (self.tag + 1) % 256
        frame = proto.request(cmd, payload, self.tag)
        for _ in range(tries):
            self.uart.send(frame)
            got = await self.replies(self.timeout_bytes + 2 * 1100 + 400, want=1, tag=self.tag)
            if got and got[0].status not in (proto.E_CRC, proto.E_TIMEOUT):
                return got[0]
        return None

    async def quiet(self) -> list:
        """Wait until any partial frame has timed out; return the replies that came meanwhile."""
        return await self.replies(self.timeout_bytes + 16, want=1 << 30)


async def load_model(link: Link, net, info) -> bool:
    if _status(await link.call(proto.BEGIN_LOAD, proto.fingerprint_bytes(info.fingerprint))) != proto.OK:
        return False
    for payload in write_payloads(net, info):
        if _status(await link.call(proto.WRITE, payload)) != proto.OK:
            return False
    return _status(await link.call(proto.RESET)) == proto.OK


def _status(r: proto.Reply | None) -> int | None:
    return None if r is None else r.status


def _agrees(result, golden, n: int) -> bool:
    return result is not None and result[0] == int(golden.classes[n]) and result[2] == golden.potentials[n].tolist()


async def run_sample(link: Link, image: np.ndarray, info) -> tuple[int, int, list[int]] | None:
    r = None
    for payload in run_payloads(image, info):
        r = await link.call(proto.RUN, payload)
        if r is None or r[0] != proto.OK:
            return None
    return proto.decode_result(r[1], info.classes)


def well_formed(rng: random.Random, info) -> bytes:
    """A WRITE, RUN or RESET with a random but valid header: these change the device's state on purpose."""
    kind, tag = rng.randrange(3), rng.randrange(256)
    if kind == 0:
        layer = rng.randrange(len(info.layers))
        region = rng.choice([r for r in proto.Region if r != proto.REGION_THRESHOLD or info.layers[layer].kind != "output"])
        size = info.layers[layer].weight_words if region == proto.REGION_WEIGHTS else info.layers[layer].channels
        n = rng.randint(1, min(4, size))
        words = [rng.getrandbits(8 * info.word_bytes) for _ in range(n)]
        return proto.request(proto.WRITE, proto.write_payload(layer, region, rng.randrange(size - n + 1), words,
                                                              info.word_bytes), tag)
    if kind == 1:
        pixels = int(np.prod(info.in_shape))
        count = rng.randint(1, min(pixels, info.max_payload - proto.RUN_HEADER))
        return proto.request(proto.RUN, proto.run_payload(0, bytes(rng.randrange(256) for _ in range(count))), tag)
    return proto.request(proto.RESET, b"", tag)


def fuzz_frame(rng: random.Random, info, valid_read: bytes) -> bytes:
    """A random, mutated or well-formed frame: garbage, harmless requests, their mutations (bits flipped, cut,
    length changed, bytes inserted), and well-formed WRITE / RUN / RESET frames whole or cut."""
    kind = rng.randrange(7)
    if kind == 6:
        return well_formed(rng, info)
    if kind == 0:  # garbage, sometimes with start bytes in it
        return bytes(rng.choice([proto.REQUEST_SOF, rng.randrange(256)]) for _ in range(rng.randrange(1, 40)))
    safe = [proto.request(proto.IDENTIFY), proto.request(proto.RESULT), valid_read,
            proto.request(rng.choice([0x00, 0x08, 0x42, 0xFF]), bytes(rng.randrange(256) for _ in range(rng.randrange(8)))),
            proto.request(proto.BEGIN_LOAD, struct.pack("<I", rng.getrandbits(32))),
            proto.request(proto.IDENTIFY, b"\x00")]
    risky = [well_formed(rng, info)]
    if kind == 1:
        return rng.choice(safe)
    original = rng.choice(safe + risky)
    frame = bytearray(original)
    if kind == 2:  # 1 to 3 distinct bits flipped (distinct: two flips of one bit would leave a risky frame intact)
        for bit in rng.sample(range(8, 8 * len(frame)), rng.randrange(1, 4)):
            frame[bit // 8] ^= 1 << (bit % 8)
        return bytes(frame)
    if kind == 3:  # cut short
        return bytes(frame[:rng.randrange(1, len(frame))])
    if kind == 4:  # length field changed (CRC fails or the frame is cut)
        old_length = struct.unpack_from("<H", frame, LENGTH_AT)[0]
        struct.pack_into("<H", frame, LENGTH_AT, rng.choice([n for n in (0, 1, 5, 1023, 1024, 1025, 4000, 65535) if n != old_length]))
        return bytes(frame)
    i = rng.randrange(1, len(frame))  # bytes inserted
    return bytes(frame[:i] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4))) + frame[i:])


@cocotb.test()
async def host_link(dut):
    with open(os.environ["QPSNN_BENCH_JOB"]) as f:
        job = json.load(f)
    net = modelfile.load(job["model"])
    images = np.load(job["images"])
    golden = run_golden(net, torch.from_numpy(images))
    await _reset(dut)
    link = Link(dut, job["divisor"], job["timeout_bytes"])
    report = {"errors": {}, "fuzz": {}, "after": {}}

    r = await link.request(proto.IDENTIFY)
    info = proto.DeviceInfo.from_bytes(r[1])
    await load_model(link, net, info)

    def status(r):
        return None if r is None else r[0]

    # ---- every error reply, provoked on purpose
    e = report["errors"]
    good = proto.request(proto.IDENTIFY)
    e["crc"] = status(await link.request(0, raw=good[:-1] + bytes([good[-1] ^ 0x40])))
    e["unknown"] = status(await link.request(0x42))
    e["length_identify"] = status(await link.request(proto.IDENTIFY, b"\x00"))
    e["length_oversized"] = status(await link.request(proto.WRITE, bytes(info.max_payload + 1)))
    e["length_write_partial_word"] = status(await link.request(proto.WRITE, proto.write_payload(0, 0, 0, [0], info.word_bytes)[:-1]))
    e["range_layer"] = status(await link.request(proto.WRITE, proto.write_payload(15, 0, 0, [0], info.word_bytes)))
    last = info.layers[0].weight_words
    e["range_write_past_end"] = status(await link.request(proto.WRITE, proto.write_payload(0, 0, last - 1, [0, 0], info.word_bytes)))
    e["range_read_past_end"] = status(await link.request(proto.READ, proto.read_payload(0, 0, last, 1)))
    e["model_fingerprint"] = status(await link.request(proto.BEGIN_LOAD, proto.fingerprint_bytes(info.fingerprint ^ 1)))
    e["state_no_result"] = status(await link.request(proto.RESULT))
    e["state_wrong_offset"] = status(await link.request(proto.RUN, b"\x05\x00" + b"\x00"))
    link.uart.send(proto.request(proto.WRITE, proto.write_payload(0, 0, 0, [1, 2, 3], info.word_bytes))[:9])  # cut
    cut = await link.quiet()
    e["timeout_cut_frame"] = cut[0][0] if cut else None
    r = await link.request(proto.IDENTIFY)
    report["after_cut_identify"] = r is not None and r[0] == proto.OK and r[1] == info.to_bytes()
    # the refused writes changed nothing: read back layer 0's weights
    words = model_words(net, info.lanes, info.offsets)[0][2]
    r = await link.request(proto.READ, proto.read_payload(0, 0, 0, len(words)))
    D = info.word_bytes
    report["weights_intact"] = r is not None and [int.from_bytes(r[1][i * D:(i + 1) * D], "little")
                                                  for i in range(len(words))] == words

    # ---- fuzz, in episodes: a client sends a run of frames (reading the replies or not) and leaves at a
    # random point of its byte stream, perhaps mid-frame; then a fresh client does what the driver does on
    # connecting (resync), identifies, loads the model and classifies a sample, which must be exact
    rng = random.Random(job.get("seed", 1))
    valid_read = proto.request(proto.READ, proto.read_payload(0, 0, 0, 1))
    statuses: dict[int, int] = {}
    fuzz = {"frames": job["fuzz_frames"], "episodes": 0, "checks_exact": 0, "lockouts": 0, "hangs": 0}
    sent = 0
    while sent < job["fuzz_frames"]:
        n = min(rng.randint(1, 2 * EPISODE_FRAMES), job["fuzz_frames"] - sent)
        reads, stream = rng.random() < 0.5, b""
        for _ in range(n):
            frame = fuzz_frame(rng, info, valid_read)
            if reads:
                link.uart.send(frame)
                for r in await link.replies(link.timeout_bytes + 16, want=1):
                    statuses[r.status] = statuses.get(r.status, 0) + 1
            else:
                stream += frame
        sent += n
        if rng.random() < 0.5:
            whole = well_formed(rng, info)
            stream += whole[:rng.randrange(1, len(whole))]  # its last frame, cut
        link.uart.send(stream)
        await Timer((1 + rng.randrange(len(stream) + 1)) * link.uart.byte_ns, unit="ns")  # gone at a random byte
        link.leave()
        fuzz["episodes"] += 1
        if _status(await link.call(proto.RESET)) != proto.OK:
            fuzz["hangs"] += 1
            continue
        r = await link.call(proto.IDENTIFY)
        k = fuzz["episodes"] % len(images)
        exact = (r is not None and r.status == proto.OK and r.payload == info.to_bytes()
                 and await load_model(link, net, info) and _agrees(await run_sample(link, images[k], info), golden, k))
        fuzz["checks_exact" if exact else "lockouts"] += 1
        write_progress(job, sent)
    for r in await link.quiet():
        statuses[r.status] = statuses.get(r.status, 0) + 1
    report["fuzz"] = {**fuzz, "statuses": {str(k): v for k, v in sorted(statuses.items())},
                      "bad_replies": link.bad_replies, "stale_replies": link.stale_replies}

    # ---- afterwards: identify, and samples classify like the golden model
    r = await link.request(proto.IDENTIFY)
    report["after"]["identify"] = r is not None and r[0] == proto.OK and r[1] == info.to_bytes()
    agree, last = 0, None
    for n in range(len(images)):
        last = await run_sample(link, images[n], info)
        if _agrees(last, golden, n):
            agree += 1
    report["after"]["samples"], report["after"]["agree"] = len(images), agree
    r = await link.call(proto.RESULT)  # the last result again, as the RUN's reply gave it
    report["after"]["result_again"] = r is not None and r.status == proto.OK \
        and proto.decode_result(r.payload, info.classes) == last
    with open(job["out"], "w") as f:
        json.dump(report, f)
