"""PLL settings for the boards, from the vendors' calculators that ship with the YoWASP tools (`icepll`,
`ecppll`), so the numbers are the ones the toolchain's authors validated, not a re-derivation."""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

from qpsnn.sw.errors import QpsnnError


@dataclass(frozen=True)
class PLLSettings:
    family: str  # ice40 | ecp5
    f_in_mhz: float
    f_out_mhz: float  # achieved
    params: dict


def _run(tool: str, args: list[str], cwd: str) -> str:
    exe = os.environ.get(tool.upper().replace("-", "_"), f"yowasp-{tool}")
    try:
        out = subprocess.run([exe, *args], capture_output=True, text=True, cwd=cwd, timeout=120)
    except FileNotFoundError:
        raise QpsnnError(f"{exe} not found: pip install 'qpsnn[fpga]' (the YoWASP tools)") from None
    if out.returncode:
        raise QpsnnError(f"{tool} could not make {args}: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


def ice40_pll(f_in_mhz: float, f_out_mhz: float) -> PLLSettings:
    with tempfile.TemporaryDirectory() as tmp:
        text = _run("icepll", ["-i", str(f_in_mhz), "-o", str(f_out_mhz)], tmp)
    values = {k: int(v) for k, v in re.findall(r"^(DIVR|DIVF|DIVQ|FILTER_RANGE):\s+(\d+)", text, re.M)}
    achieved = float(re.search(r"F_PLLOUT:\s+([\d.]+) MHz \(achieved\)", text).group(1))
    if len(values) != 4:
        raise QpsnnError(f"icepll gave no settings for {f_in_mhz} -> {f_out_mhz} MHz:\n{text}")
    return PLLSettings("ice40", f_in_mhz, achieved, values)


def ecp5_pll(f_in_mhz: float, f_out_mhz: float) -> PLLSettings:
    with tempfile.TemporaryDirectory() as tmp:
        text = _run("ecppll", ["-i", str(f_in_mhz), "-o", str(f_out_mhz), "-f", "pll.v"], tmp)
        verilog = open(os.path.join(tmp, "pll.v")).read()
    params = {k: (int(v) if v.lstrip("-").isdigit() else v.strip('"'))
              for k, v in re.findall(r"\.(CLKI_DIV|CLKOP_DIV|CLKOP_CPHASE|CLKOP_FPHASE|CLKFB_DIV)\((\"?[\w.-]+\"?)\)", verilog)}
    achieved = float(re.search(r"clkout0 frequency: ([\d.]+) MHz", text).group(1))
    if len(params) != 5:
        raise QpsnnError(f"ecppll gave no settings for {f_in_mhz} -> {f_out_mhz} MHz:\n{text}")
    return PLLSettings("ecp5", f_in_mhz, achieved, params)
