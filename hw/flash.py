"""`qpsnn flash`: program a board with openFPGALoader (or iceprog for the iCEBreaker) when one is attached."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from qpsnn.sw.errors import QpsnnError
from qpsnn.sw.options import regular_file

from .boards import board_named

PROGRAMMERS = {"icebreaker": [("openFPGALoader", ["-b", "ice40_generic"]), ("iceprog", [])],
               "ulx3s-85f": [("openFPGALoader", ["-b", "ulx3s"])]}


def flash(board_name: str, bitstream: str | Path) -> str:
    board = board_named(board_name)
    bitstream = Path(bitstream)
    regular_file(bitstream, f"bitstream (build one with qpsnn build --board {board.name})")
    for tool, args in PROGRAMMERS[board.name]:
        exe = shutil.which(tool)
        if exe is None:
            continue
        proc = subprocess.run([exe, *args, str(bitstream)], capture_output=True, text=True, timeout=300)
        if proc.returncode:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise QpsnnError(f"no {board.name} could be programmed with {tool}: "
                             f"{detail[-1] if detail else 'exit code ' + str(proc.returncode)} (is the board plugged in?)")
        return f"programmed {board.name} with {bitstream} ({tool})"
    names = " or ".join(t for t, _ in PROGRAMMERS[board.name])
    raise QpsnnError(f"no programmer found for {board.name}: install {names} and plug the board in "
                     f"(nothing was programmed)")
