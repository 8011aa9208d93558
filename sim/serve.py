"""`qpsnn serve-sim`: the accelerator's host-link top level (UART or register window) in a simulator,
reachable over TCP so the real driver can talk to it (``socket://`` or ``mmio+socket://``)."""
from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from qpsnn.sw import modelfile
from qpsnn.sw.errors import QpsnnError

from qpsnn.hw.geometry import DEFAULT_OFFSETS

from .runner import build_design

UART_TOP, MMIO_TOP = "qpsnn_uart_host", "qpsnn_mmio_host"
PCIE_TOP = "qpsnn_pcie_host"
BENCHES = {"uart": "qpsnn.sim.serve_bench", "mmio": "qpsnn.sim.serve_bench", "pcie": "qpsnn.sim.pcie_bench"}
SIM_DIVISOR = 8  # clock cycles per UART bit in simulation (a board uses clock / baud)
SIM_TIMEOUT_BYTES = 64


def host_verilog(net, lanes: int | None, mode: str, divisor: int = SIM_DIVISOR,
                 timeout_bytes: int = SIM_TIMEOUT_BYTES, max_payload: int = 1024,
                 offsets: int = DEFAULT_OFFSETS) -> tuple[str, str]:
    from amaranth.back import verilog

    from qpsnn.hw.accelerator import Accelerator

    accel = Accelerator.for_model(net, lanes, offsets)
    if mode == "uart":
        from qpsnn.hw.uart_host import UARTHost

        return verilog.convert(UARTHost(accel, divisor, max_payload=max_payload,
                                               timeout_bytes=timeout_bytes), name=UART_TOP), UART_TOP
    if mode == "mmio":
        from qpsnn.hw.mmio_host import MMIOHost

        return verilog.convert(MMIOHost(accel, max_payload=max_payload,
                                               timeout_cycles=timeout_bytes * 10 * divisor), name=MMIO_TOP), MMIO_TOP
    if mode == "pcie":  # the window behind the PCIe adapter, in the hard block's user clock
        from qpsnn.hw.mmio_host import MMIOHost
        from qpsnn.hw.pcie_endpoint import BLOCK_SETTINGS, PCIeHost

        window = MMIOHost(accel, max_payload=max_payload, timeout_cycles=timeout_bytes * 10 * divisor)
        return verilog.convert(PCIeHost(window, BLOCK_SETTINGS.data_width), name=PCIE_TOP), PCIE_TOP
    raise QpsnnError(f"unknown link {mode!r} (uart, mmio or pcie)")


def run_host_bench(net, lanes: int | None, mode: str, simulator: str, test_module: str, job: dict,
                   on_port: Callable[[int], None] | None = None, waves: bool = False,
                   max_payload: int = 1024, offsets: int = DEFAULT_OFFSETS,
                   on_progress: Callable[[int], None] | None = None) -> dict | None:
    """Build the host top level and run a cocotb module on it; ``job`` reaches the bench as JSON. Returns the
    bench's ``out`` JSON when it writes one. ``on_progress`` gets each count the bench writes to the job's
    ``progress`` file (`write_progress`)."""
    source, top = host_verilog(net, lanes, mode, max_payload=max_payload, offsets=offsets)
    runner, build = build_design(source, top, simulator, waves)
    with tempfile.TemporaryDirectory() as tmp:
        job = dict(job, mode=mode, divisor=SIM_DIVISOR, timeout_bytes=SIM_TIMEOUT_BYTES,
                   port_file=str(Path(tmp) / "port"), out=str(Path(tmp) / "out.json"),
                   progress=str(Path(tmp) / "progress"))
        (Path(tmp) / "job.json").write_text(json.dumps(job))
        stop = threading.Event()
        if on_port is not None:
            def watch():
                while not stop.is_set():
                    p = Path(job["port_file"])
                    if p.exists():
                        on_port(int(p.read_text()))
                        return
                    time.sleep(0.05)
            threading.Thread(target=watch, daemon=True).start()
        if on_progress is not None:
            def follow():
                seen = 0
                while not stop.wait(0.5):
                    p = Path(job["progress"])
                    value = int(p.read_text() or 0) if p.exists() else 0
                    if value != seen:
                        on_progress(value)
                        seen = value
            threading.Thread(target=follow, daemon=True).start()
        try:
            runner.test(hdl_toplevel=top, test_module=test_module, build_dir=build, waves=waves, test_dir=tmp,
                        extra_env={"QPSNN_BENCH_JOB": str(Path(tmp) / "job.json"), "COCOTB_LOG_LEVEL": "WARNING"},
                        log_file=Path(tmp) / "test.log")
        except SystemExit:
            pass
        finally:
            stop.set()
        out = Path(job["out"])
        if out.exists():
            return json.loads(out.read_text())
        log = (Path(tmp) / "test.log").read_text()[-3000:] if (Path(tmp) / "test.log").exists() else ""
        if on_port is None or not Path(job["port_file"]).exists():  # written once, atomically, when it serves
            raise QpsnnError(f"the {simulator} host bench ended without {'results' if on_port is None else 'serving'}:"
                             f"\n{log}")
        return None


def write_progress(job: dict, value: int) -> None:
    """From inside a bench: how far it is, for the parent's ``on_progress``."""
    part = Path(job["progress"] + ".tmp")
    part.write_text(str(value))
    part.replace(job["progress"])


def serve(path: str | Path, port: int = 0, simulator: str = "verilator", mode: str = "uart", lanes: int | None = None,
          clients: int | None = None, on_port: Callable[[int], None] | None = None, max_payload: int = 1024,
          offsets: int = DEFAULT_OFFSETS) -> None:
    net = modelfile.load(path)
    run_host_bench(net, lanes, mode, simulator, BENCHES.get(mode, BENCHES["uart"]),
                   {"port": port, "clients": clients},
                   on_port=on_port or (lambda p: None), max_payload=max_payload, offsets=offsets)
