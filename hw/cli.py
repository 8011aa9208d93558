"""The ``qpsnn build`` and ``qpsnn flash`` subcommands (registered into the main CLI)."""
from __future__ import annotations

import json
from pathlib import Path

from qpsnn.sw.errors import require_extra

FPGA = ("amaranth", "amaranth_boards")  # what a bitstream build imports (yosys and nextpnr are checked as tools)


def cmd_build(args) -> int:
    from qpsnn.sw.errors import QpsnnError

    from .manifest import check_manifest, reproduce, write_manifest

    root = Path(args.manifest_root)
    if args.reproduce:
        require_extra("build --reproduce", "fpga", *FPGA)
        problems = reproduce(root)
        print(f"{root}: {'every kept bitstream rebuilds to its manifest sha256' if not problems else str(len(problems)) + ' differ'}")
        return 0 if not problems else 1
    if args.check:
        problems = check_manifest(root)
        for p in problems:
            print(f"  {p}")
        print(f"{root / 'manifest.json'}: {'OK' if not problems else str(len(problems)) + ' problem(s)'}")
        return 0 if not problems else 1
    if args.write_manifest:
        print(f"wrote {write_manifest(root)}")
        return 0
    if not args.file or not args.board:
        raise QpsnnError("give a model file and --board (or --check / --write-manifest)")
    require_extra("build", "fpga", *FPGA)
    from .board_build import build

    report = build(args.file, args.board, args.lanes, args.clock, args.baud, args.out, offsets=args.offsets,
                   unrolled=args.unrolled)
    print(json.dumps(report, indent=1))
    if not report["timing_met"]:
        print(f"qpsnn: timing NOT met: Fmax {report['fmax_mhz']} MHz < {report['clock_mhz']} MHz; "
              f"rebuild with a lower --clock")
        return 1
    return 0


def cmd_flash(args) -> int:
    from .boards import board_named
    from .board_build import bitstream_name
    from .flash import flash

    board = board_named(args.board)
    path = args.bitstream or Path("bitstreams") / board.name / "digits" / bitstream_name(board)
    print(flash(board.name, path))
    return 0


def _lanes(text: str):
    from qpsnn.sw.options import lanes

    return None if text == "auto" else lanes(text)


def register(sub) -> None:
    from qpsnn.sw import options as opt

    from .sweep import register as register_sweep
    from .boards import BOARDS

    p = sub.add_parser("build", help="build a bitstream for a dev board (YoWASP yosys/nextpnr) and its report.json")
    p.add_argument("file", nargs="?")
    p.add_argument("--board", choices=sorted(BOARDS))
    p.add_argument("--lanes", type=_lanes, default=None,
                   help="P, output neurons per cycle: a power of two, or auto (default): the largest that fits the board")
    p.add_argument("--offsets", type=int, choices=(1, 9),
                   help="kernel offsets a conv layer updates per cycle (default: the board's, 1 on both boards today)")
    p.add_argument("--unrolled", action="store_true",
                   help="run layer 1 (a hidden conv layer) time-unrolled and dense: no membranes, no spike queues "
                        "(what fits MNIST on the iCEBreaker)")
    p.add_argument("--clock", type=opt.clock_mhz, help="MHz from the PLL (default: 16 iCEBreaker, 30 ULX3S: what their kept builds meet)")
    p.add_argument("--baud", type=opt.baud, default=115200)
    p.add_argument("--out", type=opt.output_dir, help="folder for the bitstream and report.json (default bitstreams/BOARD)")
    p.add_argument("--check", action="store_true", help="verify bitstreams/manifest.json against the files")
    p.add_argument("--write-manifest", action="store_true", help="(re)write bitstreams/manifest.json")
    p.add_argument("--reproduce", action="store_true",
                   help="rebuild every kept bitstream with the command in its report.json and compare with the manifest")
    p.add_argument("--manifest-root", default="bitstreams")
    p.set_defaults(func=cmd_build)

    register_sweep(sub)

    p = sub.add_parser("flash", help="program an attached board with a built bitstream")
    p.add_argument("--board", required=True, choices=sorted(BOARDS))
    p.add_argument("--bitstream", help="default bitstreams/BOARD/digits/qpsnn.{bin,bit}")
    p.set_defaults(func=cmd_flash)
