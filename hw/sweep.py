"""Network and accelerator co-design for one board: every trained model x every (P, kernel offsets[, layer 1
unrolled]) choice,
measured, and the Pareto front of accuracy, images per second and logic.

Nothing in a point is estimated by hand: accuracy is the integer golden model on the test set, cycles come from
the cycle model (exact to the cycle against the RTL), block RAMs and SPRAMs from the memory plan of the
elaborated design (what `qpsnn build` checks before synthesis) and, with ``synth=True``, logic cells and DSP
blocks from yosys's synthesis for the board's family, packed by nextpnr. Images per second are cycles at a stated clock.
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from qpsnn.sw import modelfile
from qpsnn.sw.errors import QpsnnError
from qpsnn.sw.spec import LayerSpec

from .boards import Board
from .geometry import CapacityError


@dataclass
class Point:
    model: str
    spec: str
    bits: str  # per layer, e.g. "8/4/8"
    timesteps: int
    lanes: int
    offsets: int
    accuracy: float
    test_images: int
    cycles: float  # mean cycles per image
    clock_mhz: float
    images_per_second: float
    bram: int | None = None
    spram: int | None = None
    logic: int | None = None  # the board's logic units (LC / LUT4) after synthesis, None unless synthesized
    dsp: int | None = None
    fits: bool = True
    why: str = ""  # what does not fit
    pareto: bool = False
    unrolled: bool = False  # layer 1 time-unrolled (`qpsnn.hw.unrolled_layer`)

    @property
    def images_per_second_per_logic(self) -> float | None:
        return self.images_per_second / self.logic if self.logic else None


def spec_of(net) -> str:
    """The spec string of a network as built (after pruning), e.g. c8-p2-c16-p2-fc10."""
    return "-".join(LayerSpec(layer.kind, layer.channels, layer.pool).token() for layer in net.layers)


def synth_resources(net, board: Board, lanes: int, offsets: int, clock_mhz: float, cache: Path | None = None,
                    unrolled: bool = False) -> dict:
    """Logic units and DSP blocks of the whole board design (PLL, reset, UART host link, accelerator), run
    through `qpsnn build`'s own yosys step and then nextpnr's packer: the count the build reports (an iCE40
    LC holds a LUT, a flip-flop and a carry, so LUTs alone undercount by a third). Cached by the design's
    files, so an unchanged point is not synthesized twice."""
    from .board_build import NAME, UTILIZATION, _steps, board_plan, clocking, tool_env

    pll, _, divisor = clocking(board, clock_mhz, 115200)
    plan = board_plan(net, board, lanes, offsets, pll, divisor, unrolled)
    with tempfile.TemporaryDirectory() as tmp:
        plan.extract(tmp)
        steps = _steps(Path(tmp) / f"build_{NAME}.sh")[:2]
        # pack only, and no placed-design output (nextpnr stops with an exception writing one it never placed)
        steps[1] = re.sub(r" --(asc|textcfg) \S+", "", steps[1]) + " --pack-only"
        key = hashlib.sha256("\n".join(steps + [(Path(tmp) / f"{NAME}.{ext}").read_text() for ext in ("ys", "il")])
                             .encode()).hexdigest()
        store = json.loads(cache.read_text()) if cache and cache.exists() else {}
        if key in store:
            return store[key]
        for line in steps:
            proc = subprocess.run(["sh", "-c", line], cwd=tmp, env=tool_env(), capture_output=True, text=True)
            if proc.returncode:
                report = Path(tmp) / f"{NAME}.rpt"
                text = proc.stderr or proc.stdout or (report.read_text() if report.exists() else "")
                raise QpsnnError(f"{line.split()[0].strip(chr(34) + '$')} failed on the sweep point:\n{text[-1500:]}")
        used = json.loads((Path(tmp) / f"{NAME}.report.json").read_text())["utilization"]
    names = UTILIZATION[board.family]
    found = {"logic": used[names["logic"]]["used"], "dsp": used[names["dsp"]]["used"]}
    if cache:
        store[key] = found
        cache.parent.mkdir(parents=True, exist_ok=True)
        part = cache.with_suffix(".tmp")
        part.write_text(json.dumps(store, indent=1))
        part.replace(cache)
    return found


def mark_pareto(points: list[Point]) -> None:
    """A point is on the front when no other point that fits the board is at least as good in accuracy,
    images per second and logic (memory blocks when not synthesized) and better in one of them."""
    def cost(p: Point) -> float:
        return p.logic if p.logic is not None else (p.bram or 0) + 32 * (p.spram or 0)

    live = [p for p in points if p.fits]
    for p in points:
        p.pareto = p.fits and not any(
            q.accuracy >= p.accuracy and q.images_per_second >= p.images_per_second and cost(q) <= cost(p)
            and (q.accuracy > p.accuracy or q.images_per_second > p.images_per_second or cost(q) < cost(p))
            for q in live if q is not p)


def sweep(models: list[str | Path], board: Board, lanes: list[int], offsets: list[int], clock_mhz: float,
          samples: int | None = None, synth: bool = False, cache: Path | None = None,
          dataset: str | None = None, data_path: str | None = None, progress=None,
          unrolled: bool = False) -> list[Point]:
    """``unrolled``: every configuration also with layer 1 unrolled, for the models that allow it."""
    from .board_build import DSP_RESERVE, can_unroll, encoder_products_fit, golden_cycles, host_design
    from .memory_plan import check_board_fits

    points = []
    for path in models:
        net = modelfile.load(path)
        widest = max(layer.channels for layer in net.layers)
        schedules = (False, True) if unrolled and can_unroll(net) else (False,)
        # more lanes than channels buy nothing
        usable = [(p, o, u) for p in lanes for o in offsets for u in schedules if p < 2 * widest]
        _, accuracy, n, cycles = golden_cycles(net, usable, dataset, data_path, samples)
        for (p, o, u) in usable:
            mean = float(np.mean(cycles[(p, o, u)]))
            point = Point(str(path), spec_of(net), "/".join(str(layer.bits) for layer in net.layers),
                          net.timesteps, p, o, round(accuracy, 2), n, round(mean, 1), clock_mhz,
                          round(clock_mhz * 1e6 / mean, 1), unrolled=u)
            design = host_design(net, board, p, o, unrolled=u)
            try:
                memory = check_board_fits(design, board)
                point.bram, point.spram = memory.bram, memory.spram
            except CapacityError as exc:
                point.fits, point.why = False, str(exc).split(";")[0]
            if synth and point.fits:
                found = synth_resources(net, board, p, o, clock_mhz, cache, u)
                point.logic, point.dsp = found["logic"], found["dsp"]
                if point.logic > board.logic:
                    point.fits, point.why = False, f"{point.logic} {board.logic_name} > {board.logic}"
                elif board.dsp and point.dsp > board.dsp:
                    point.fits, point.why = False, f"{point.dsp} DSP blocks > {board.dsp}"
            elif not encoder_products_fit(board, p, o) and point.fits:
                point.fits, point.why = False, f"{p * o} encoder multipliers > {board.dsp - DSP_RESERVE} DSP blocks"
            points.append(point)
            if progress:
                progress(point)
    mark_pareto(points)
    return points


def plot(points: list[Point], board: Board, out: Path) -> None:
    """Two views of the three objectives: accuracy against images/s, and images/s against logic (memory
    blocks when not synthesized). One colour per model; front points ringed in red; x = does not fit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    synthesized = any(p.logic is not None for p in points)
    cost_name = f"{board.logic_name} (yosys + nextpnr pack)" if synthesized else f"{board.bram_name} block RAMs (memory plan)"

    def cost(p: Point):
        return p.logic if synthesized else p.bram

    models = list(dict.fromkeys(p.model for p in points))
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(models)}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6))
    for m in models:
        mine = [p for p in points if p.model == m]
        first = mine[0]
        label = f"{first.spec} T={first.timesteps} ({m})"
        fit = [p for p in mine if p.fits and cost(p) is not None]
        left.scatter([p.images_per_second for p in fit], [p.accuracy for p in fit], color=colours[m], s=30,
                     label=label, zorder=3)
        right.scatter([cost(p) for p in fit], [p.images_per_second for p in fit], color=colours[m], s=30, zorder=3)
        over = [p for p in mine if not p.fits]
        left.scatter([p.images_per_second for p in over], [p.accuracy for p in over], marker="x",
                     color=colours[m], s=30, zorder=2)
        for p in fit:
            right.annotate(f"P{p.lanes}/o{p.offsets}{'/u' if p.unrolled else ''}", (cost(p), p.images_per_second), fontsize=6,
                           xytext=(3, -8 if p.offsets == 9 else 3), textcoords="offset points")
    front = [p for p in points if p.pareto]
    left.scatter([p.images_per_second for p in front], [p.accuracy for p in front], s=110, facecolors="none",
                 edgecolors="red", label="Pareto front", zorder=4)
    right.scatter([cost(p) for p in front], [p.images_per_second for p in front], s=110, facecolors="none",
                  edgecolors="red", zorder=4)
    left.set_xscale("log")  # every point has its images/s, fitting or not
    left.set_xlabel(f"images/s at {points[0].clock_mhz:g} MHz (cycle model; x: does not fit)")
    left.set_ylabel("integer accuracy on the test set (%)")
    left.legend(fontsize=7, loc="lower left")
    if any(p.fits and cost(p) is not None for p in points):  # an empty axis cannot be log-scaled
        right.set_yscale("log")
    else:
        right.text(0.5, 0.5, "no point fits the board", ha="center", va="center", transform=right.transAxes)
    right.set_xlabel(cost_name)
    right.set_ylabel("images/s")
    fig.suptitle(f"qpsnn sweep on the {board.name}: accuracy, images/s and resources of every point")
    fig.tight_layout()
    fig.savefig(out, dpi=130)
    plt.close(fig)


def write(points: list[Point], board: Board, out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"board": board.name, "points": [asdict(p) for p in points]}
    tmp = out_dir / "sweep.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(out_dir / "sweep.json")
    plot(points, board, out_dir / "pareto.png")
    return doc


def _offsets(text: str) -> int:
    import argparse

    if text not in ("1", "9"):
        raise argparse.ArgumentTypeError(f"{text!r}: kernel offsets per cycle are 1 or 9")
    return int(text)


def cmd_sweep(args) -> int:
    from qpsnn.sw.errors import require_extra
    from qpsnn.sw.options import regular_file

    from .boards import board_named

    require_extra("sweep", "hw", "amaranth")  # the memory plan elaborates the design
    board = board_named(args.board)
    for m in args.models:
        regular_file(m, "model file")
    clock = args.clock or board.default_mhz
    out = Path(args.out or Path("runs") / "sweep" / board.name)

    def show(p):
        fit = "fits" if p.fits else f"does not fit: {p.why}"
        logic = f", {p.logic} {board.logic_name}, {p.dsp} DSP" if p.logic is not None else ""
        print(f"  {p.model} P={p.lanes} o={p.offsets}{' unrolled' if p.unrolled else ''}: {p.accuracy:.2f} %, "
              f"{p.cycles:,.0f} cycles, "
              f"{p.images_per_second:,.0f} images/s, {p.bram} {board.bram_name} + {p.spram} SPRAM{logic}; {fit}",
              flush=True)

    points = sweep(args.models, board, args.lanes, args.offsets, clock, args.samples, args.synth,
                   out / "synth_cache.json" if args.synth else None, progress=show, unrolled=args.unrolled)
    write(points, board, out)
    front = [p for p in points if p.pareto]
    print(f"Pareto front ({len(front)} of {len(points)} points):")
    for p in sorted(front, key=lambda p: p.images_per_second):
        print(f"  {p.spec} T={p.timesteps} bits {p.bits} P={p.lanes} offsets {p.offsets}"
              f"{' unrolled' if p.unrolled else ''}: {p.accuracy:.2f} %, "
              f"{p.images_per_second:,.0f} images/s" + (f", {p.logic} {board.logic_name}" if p.logic else ""))
    print(f"wrote {out / 'sweep.json'} and {out / 'pareto.png'}")
    return 0



def register(sub) -> None:
    """``qpsnn sweep`` (called from `qpsnn.hw.cli.register`)."""
    from qpsnn.sw import options as opt

    from .boards import BOARDS

    p = sub.add_parser("sweep", help="co-design: models x (P, offsets) on a board, measured; the Pareto front as a plot")
    p.add_argument("models", nargs="+", metavar="MODEL", help="trained model files (qpsnn train)")
    p.add_argument("--board", required=True, choices=sorted(BOARDS))
    p.add_argument("--lanes", type=opt.list_of(opt.lanes), default=[1, 2, 4, 8, 16], help="P values (default 1,2,4,8,16)")
    p.add_argument("--offsets", type=opt.list_of(_offsets), default=[1, 9],
                   help="kernel offsets per cycle (default 1,9)")
    p.add_argument("--clock", type=opt.clock_mhz, help="MHz that images/s are computed at (default: the board's build clock)")
    p.add_argument("--samples", type=opt.samples, help="only the first N test images (default: all)")
    p.add_argument("--synth", action="store_true", help="synthesize every point that fits for its logic and DSP count")
    p.add_argument("--unrolled", action="store_true",
                   help="every configuration also with layer 1 unrolled (no membranes, no queues), where the model allows")
    p.add_argument("--out", type=opt.output_dir, help="folder for sweep.json and pareto.png (default runs/sweep/BOARD)")
    p.set_defaults(func=cmd_sweep)
