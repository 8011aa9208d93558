"""The ``qpsnn sim`` subcommand (registered into the main CLI)."""
from __future__ import annotations

import json


def cmd_sim(args) -> int:
    from qpsnn.hw.geometry import CapacityError
    from qpsnn.sw.errors import QpsnnError

    from .simulate import simulate

    try:
        report = simulate(args.file, args.simulator, args.samples, args.lanes, args.waves, args.dataset, args.data_path,
                          offsets=args.offsets)
    except CapacityError as exc:
        raise QpsnnError(str(exc)) from None
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['samples']} samples on {report['simulator']} (P={report['lanes']}, offsets={report['offsets']}): "
              f"{'bit-exact' if report['bit_exact'] else str(report['mismatches']) + ' MISMATCHES'}; "
              f"{report['cycles_total']} cycles, bound {report['bound_cycles_total']} "
              f"(x{report['cycles_over_bound']}), {report['events_total']} events, {report['sim_seconds']} s simulated")
        for mm in report["first_mismatches"]:
            print(f"  mismatch: {mm}")
        if report["first_mismatches"] and report["waves"]:
            print(f"  waveform: {report['waves']}")
    return 0 if report["bit_exact"] else 1


def cmd_bench_density(args) -> int:
    from .density import density_benchmark

    summary = density_benchmark(args.file, args.out, args.samples, args.lanes, args.simulator, offsets=args.offsets)
    print(json.dumps(summary, indent=1))
    return 0


def cmd_serve_sim(args) -> int:
    from pathlib import Path

    from qpsnn.sw.errors import QpsnnError

    from .serve import serve

    if not Path(args.file).exists():
        raise QpsnnError(f"{args.file}: no such model file (the accelerator is generated for a model: qpsnn demo makes one)")
    scheme = "socket" if args.link == "uart" else "mmio+socket"

    def announce(port):
        print(f"serving the {args.simulator} simulation of {args.file} ({args.link}) on {scheme}://127.0.0.1:{port}"
              f"  (Ctrl-C stops)", flush=True)

    try:
        serve(args.file, args.port, args.simulator, args.link, args.lanes, args.clients, announce, args.max_payload,
              args.offsets)
    except KeyboardInterrupt:
        print("serve-sim: stopped", flush=True)
    return 0


def cmd_bench_link(args) -> int:
    from .link_check import check_link

    report = check_link(args.file, args.frames, args.samples, args.seed, args.simulator)
    print(json.dumps(report, indent=1))
    ok = report["after"]["identify"] and report["after"]["agree"] == report["after"]["samples"] \
        and report["fuzz"]["bad_replies"] == 0
    return 0 if ok else 1


def _offsets(p) -> None:
    from qpsnn.hw.geometry import DEFAULT_OFFSETS, OFFSET_CHOICES

    p.add_argument("--offsets", type=int, choices=OFFSET_CHOICES, default=DEFAULT_OFFSETS,
                   help=f"kernel offsets a conv layer updates per cycle: 9 = kernel-parallel (default), 1 = serial "
                        f"(the iCE40 build)")


def register(sub) -> None:
    from .toolchain import SIMULATORS

    p = sub.add_parser("sim", help="run test images through the RTL (cocotb) and compare with the golden model")
    p.add_argument("file")
    p.add_argument("--simulator", choices=SIMULATORS, default="verilator")
    p.add_argument("--samples", type=int, help="only the first N test images (default: all)")
    p.add_argument("--lanes", type=int, help="P, output neurons updated per cycle (default: the file's)")
    _offsets(p)
    p.add_argument("--waves", action="store_true", help="keep a waveform file of the run")
    p.add_argument("--dataset", help="data set (default: the one the model was trained on)")
    p.add_argument("--data-path")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser("serve-sim", help="simulate the accelerator with its host link and serve it on a TCP port")
    p.add_argument("file", nargs="?", default="model.qpsnn", help="model whose accelerator to build (default model.qpsnn)")
    p.add_argument("--port", type=int, default=0, help="TCP port (default: any free one, printed)")
    p.add_argument("--simulator", choices=SIMULATORS, default="verilator")
    p.add_argument("--link", choices=("uart", "mmio"), default="uart",
                   help="uart: RX/TX pins (connect with socket://); mmio: the register window (mmio+socket://)")
    p.add_argument("--lanes", type=int)
    _offsets(p)
    p.add_argument("--clients", type=int, help="stop after serving this many clients (default: serve until stopped)")
    p.add_argument("--max-payload", type=int, default=1024,
                   help="the frame buffer in bytes (default 1024; the iCEBreaker build uses 512)")
    p.set_defaults(func=cmd_serve_sim)

    p = sub.add_parser("bench-link", help="host link: every error reply, a cut frame, N fuzz frames, then samples")
    p.add_argument("file")
    p.add_argument("--frames", type=int, default=10000, help="fuzz frames (default 10,000; CI runs 1,000)")
    p.add_argument("--samples", type=int, default=4, help="samples classified after the fuzz")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--simulator", choices=SIMULATORS, default="verilator")
    p.set_defaults(func=cmd_bench_link)

    p = sub.add_parser("bench-density", help="RTL cycles against events at three spike densities (plot + JSON)")
    p.add_argument("file")
    p.add_argument("--samples", type=int, default=20, help="images per density (default 20)")
    p.add_argument("--lanes", type=int)
    _offsets(p)
    p.add_argument("--simulator", choices=SIMULATORS, default="verilator")
    p.add_argument("--out", default="runs/density")
    p.set_defaults(func=cmd_bench_density)
