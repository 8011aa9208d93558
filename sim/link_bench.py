"""cocotb bench of the host link on the UART top level: provokes every error reply on purpose, recovers from
a frame cut mid-way, then sends a stream of random and mutated frames (the fuzz) and checks that afterwards
the device still identifies itself and classifies a sample exactly like the golden model.

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

from .serve_bench import _reset
from .uart_model import UARTHostModel


class Link:
    def __init__(self, dut, divisor: int, timeout_bytes: int):
        self.uart = UARTHostModel(dut, divisor)
        self.timeout_bytes = timeout_bytes
        self.parser = proto.ReplyParser()
        self.bad_replies = 0

    async def replies(self, limit_bytes: int, want: int = 1) -> list:
        """Replies that arrive within ``limit_bytes`` byte times after the last byte sent (stops at ``want``)."""
        got = []
        await self.uart.idle.wait()
        step = self.uart.byte_ns * 8
        for _ in range(max(1, limit_bytes // 8)):
            await Timer(step, unit="ns")
            self.parser.feed(self.uart.take())
            while (r := self.parser.take()) is not None:
                if r[0] is None:
                    self.bad_replies += 1
                else:
                    got.append(r)
            if len(got) >= want:
                break
        return got

    async def request(self, cmd: int, payload: bytes = b"", raw: bytes | None = None) -> tuple[int, bytes] | None:
        self.uart.send(raw if raw is not None else proto.request(cmd, payload))
        got = await self.replies(self.timeout_bytes + 2 * 1100 + 400)
        return got[0] if got else None

    async def quiet(self) -> list:
        """Wait until any partial frame has timed out; return the replies that came meanwhile."""
        return await self.replies(self.timeout_bytes + 16, want=1 << 30)


async def load_model(link: Link, net, info) -> None:
    assert (await link.request(proto.BEGIN_LOAD, proto.fingerprint_bytes(info.fingerprint)))[0] == proto.OK
    for payload in write_payloads(net, info):
        r = await link.request(proto.WRITE, payload)
        assert r is not None and r[0] == proto.OK, f"write failed: {r}"
    assert (await link.request(proto.RESET))[0] == proto.OK


async def run_sample(link: Link, image: np.ndarray, info) -> tuple[int, int, list[int]] | None:
    r = None
    for payload in run_payloads(image, info):
        r = await link.request(proto.RUN, payload)
        if r is None or r[0] != proto.OK:
            return None
    return proto.decode_result(r[1], info.classes)


def fuzz_frame(rng: random.Random, info, valid_read: bytes) -> bytes:
    """A random or mutated frame; never a well-formed WRITE, RESET or RUN (those legitimately change state)."""
    kind = rng.randrange(6)
    if kind == 0:  # garbage, sometimes with start bytes in it
        return bytes(rng.choice([proto.REQUEST_SOF, rng.randrange(256)]) for _ in range(rng.randrange(1, 40)))
    safe = [proto.request(proto.IDENTIFY), proto.request(proto.RESULT), valid_read,
            proto.request(rng.choice([0x00, 0x08, 0x42, 0xFF]), bytes(rng.randrange(256) for _ in range(rng.randrange(8)))),
            proto.request(proto.BEGIN_LOAD, struct.pack("<I", rng.getrandbits(32))),
            proto.request(proto.IDENTIFY, b"\x00")]
    risky = [proto.request(proto.WRITE, proto.write_payload(0, 0, 0, [rng.getrandbits(8 * info.word_bytes)], info.word_bytes)),
             proto.request(proto.RUN, b"\x00\x00" + bytes(rng.randrange(256) for _ in range(8))), proto.request(proto.RESET)]
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
        old_length = struct.unpack_from("<H", frame, 2)[0]
        struct.pack_into("<H", frame, 2, rng.choice([n for n in (0, 1, 5, 1023, 1024, 1025, 4000, 65535) if n != old_length]))
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

    # ---- fuzz
    rng = random.Random(job.get("seed", 1))
    valid_read = proto.request(proto.READ, proto.read_payload(0, 0, 0, 1))
    statuses: dict[int, int] = {}
    for _ in range(job["fuzz_frames"]):
        link.uart.send(fuzz_frame(rng, info, valid_read))
        for s, _body in await link.replies(link.timeout_bytes + 16, want=1):
            statuses[s] = statuses.get(s, 0) + 1
    for s, _body in await link.quiet():
        statuses[s] = statuses.get(s, 0) + 1
    report["fuzz"] = {"frames": job["fuzz_frames"], "statuses": {str(k): v for k, v in sorted(statuses.items())},
                      "bad_replies": link.bad_replies}

    # ---- afterwards: identify, and samples classify like the golden model
    r = await link.request(proto.IDENTIFY)
    report["after"]["identify"] = r is not None and r[0] == proto.OK and r[1] == info.to_bytes()
    agree = 0
    for n in range(len(images)):
        res = await run_sample(link, images[n], info)
        if res is not None and res[0] == int(golden.classes[n]) and res[2] == golden.potentials[n].tolist():
            agree += 1
    report["after"]["samples"], report["after"]["agree"] = len(images), agree
    with open(job["out"], "w") as f:
        json.dump(report, f)
