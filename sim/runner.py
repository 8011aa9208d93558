"""Generate the accelerator's Verilog with Amaranth, build it with Verilator or Icarus through
`cocotb_tools.runner`, and run the bench on a set of images. Builds are cached by the Verilog's hash."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qpsnn.sw.errors import QpsnnError
from qpsnn.sw.intnet import IntNet

from .toolchain import prepare

TOP = "qpsnn_accel"


@dataclass
class BenchResult:
    results: list
    mismatches: list
    mismatch_count: int
    sim_seconds: float
    waves: str | None
    build_dir: str


def generate_verilog(net: IntNet, lanes: int, forwarding: bool = True, offsets: int = 1, fault: str | None = None,
                     unrolled: bool = False) -> str:
    from amaranth.back import verilog

    from qpsnn.hw.accelerator import Accelerator
    from qpsnn.hw.boards import LUT_RAM
    from qpsnn.hw.params import Placement

    # kernel-parallel membranes in LUT RAM, as the one board that builds them (ULX3S) places them
    placement = Placement(membranes=LUT_RAM) if offsets > 1 else Placement()
    return verilog.convert(Accelerator.for_model(net, lanes, offsets, unrolled, forwarding=forwarding, fault=fault,
                                                 placement=placement), name=TOP)


def build_design(source: str, top: str, simulator: str, waves: bool = False, work: str | Path | None = None,
                 extra_sources: list[Path] = ()):
    """Build generated Verilog for a simulator, cached by the source's hash; returns (runner, build dir).
    ``extra_sources``: library files compiled with it (a vendor's cell models for a netlist)."""
    from cocotb_tools.runner import get_runner

    prepare(simulator)
    build_args = ["-Wno-fatal", "-Wno-WIDTH", "-O2"] if simulator == "verilator" else ["-g2012"]
    timescale = ("1ns", "1ps")  # Icarus's default precision is 1 s, too coarse for a bench's clock in ns
    digest = hashlib.sha256(f"{source}{build_args}{timescale}".encode()).hexdigest()[:16]
    root = Path(work or os.environ.get("QPSNN_SIM_BUILD", Path.cwd() / "sim_build"))
    build = root / f"{simulator}-{top}-{digest}{'-waves' if waves else ''}"
    build.mkdir(parents=True, exist_ok=True)
    vfile = build / f"{top}.v"
    if not vfile.exists() or vfile.read_text() != source:
        vfile.write_text(source)
    runner = get_runner(simulator)
    runner.build(sources=[vfile, *extra_sources], hdl_toplevel=top, build_dir=build, waves=waves, build_args=build_args,
                 timescale=timescale, log_file=build / "build.log")
    return runner, build


def run_bench(model_path: str | Path, net: IntNet, images: np.ndarray, simulator: str = "verilator", lanes: int = 8,
              waves: bool = False, forwarding: bool = True, work: str | Path | None = None,
              max_mismatches: int = 20, source: str | None = None, extra_sources: list[Path] = (),
              offsets: int = 1, fault: str | None = None, unrolled: bool = False) -> BenchResult:
    """The accelerator bench on ``images``; ``source`` replaces the generated Verilog (a synthesized netlist)."""
    source = source if source is not None else generate_verilog(net, lanes, forwarding, offsets, fault, unrolled)
    runner, build = build_design(source, TOP, simulator, waves, work, extra_sources)
    return run_built(runner, build, model_path, images, lanes, offsets, waves, max_mismatches, unrolled=unrolled)


def run_built(runner, build: Path, model_path: str | Path, images: np.ndarray, lanes: int, offsets: int,
              waves: bool = False, max_mismatches: int = 20, test_dir: Path | None = None,
              threads: int | None = None, unrolled: bool = False) -> BenchResult:
    """The bench on ``images`` in a design `build_design` built. ``test_dir`` (default: the build folder) is where
    the simulator runs and logs: give each of several concurrent runs its own, with its own ``runner``, and
    ``threads`` (the bench's golden model is torch, whose default threads would oversubscribe the cores)."""
    test_dir = Path(test_dir or build)
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "images.npy", np.ascontiguousarray(images, dtype=np.uint8))
        job = {"model": str(Path(model_path).resolve()), "lanes": lanes, "offsets": offsets, "unrolled": unrolled,
               "images": str(Path(tmp) / "images.npy"),
               "out": str(Path(tmp) / "out.json"), "max_mismatches": max_mismatches}
        (Path(tmp) / "job.json").write_text(json.dumps(job))
        try:
            runner.test(hdl_toplevel=TOP, test_module="qpsnn.sim.bench_accelerator", build_dir=build, waves=waves,
                        extra_env={"QPSNN_BENCH_JOB": str(Path(tmp) / "job.json"), "COCOTB_LOG_LEVEL": "WARNING",
                                   **({"OMP_NUM_THREADS": str(threads)} if threads else {})},
                        test_dir=test_dir, log_file=test_dir / "test.log")
        except SystemExit:
            pass  # the bench failed its assertion; its report is in out.json
        out_file = Path(tmp) / "out.json"
        if not out_file.exists():
            raise QpsnnError(f"the {runner.__class__.__name__} bench ended without results (see {test_dir / 'test.log'})")
        out = json.loads(out_file.read_text())
    wave_files = sorted(str(p) for p in test_dir.glob("*.fst")) + sorted(str(p) for p in test_dir.glob("*.vcd"))
    return BenchResult(out["results"], out["mismatches"], out["mismatch_count"], out["sim_seconds"],
                       wave_files[0] if wave_files else None, str(build))
