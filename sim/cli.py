"""The ``qpsnn sim`` subcommand (registered into the main CLI)."""
from __future__ import annotations

import json

from qpsnn.sw import options as opt
from qpsnn.sw.errors import require_extra

HW = ("amaranth", "cocotb")  # what every command here imports once it runs (the RTL, the cocotb benches)


def cmd_sim(args) -> int:
    require_extra("sim", "hw", *HW)
    from qpsnn.hw.geometry import CapacityError
    from qpsnn.sw.errors import QpsnnError

    from .simulate import simulate

    try:
        report = simulate(args.file, args.simulator, args.samples, args.lanes, args.waves, args.dataset, args.data_path,
                          offsets=args.offsets, jobs=args.jobs, unrolled=args.unrolled)
    except CapacityError as exc:
        raise QpsnnError(str(exc)) from None
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print(f"{report.samples} samples on {report.simulator} (P={report.lanes}, offsets={report.offsets}"
              f"{', layer 1 unrolled' if report.unrolled else ''}): "
              f"{'bit-exact' if report.bit_exact else str(report.mismatches) + ' MISMATCHES'}; "
              f"{report.cycles_total} cycles, bound {report.bound_cycles_total} "
              f"(x{report.cycles_over_bound}), {report.events_total} events, {report.sim_seconds} s simulated"
              f"{' in ' + str(report.jobs) + ' jobs' if report.jobs > 1 else ''}")
        for mm in report.first_mismatches:
            print(f"  mismatch: {mm}")
        if report.first_mismatches and report.waves:
            print(f"  waveform: {report.waves}")
    return 0 if report.bit_exact else 1


def cmd_postsynth(args) -> int:
    """The board's netlist (yosys) under Icarus with yosys's cell models, against the golden and cycle models."""
    require_extra("postsynth", "hw", *HW)
    from qpsnn.hw.boards import board_named
    from qpsnn.hw.geometry import CapacityError
    from qpsnn.sw import modelfile
    from qpsnn.sw.evaluate import dataset_for
    from qpsnn.sw.errors import QpsnnError

    from .postsynth import check_netlist

    board = board_named(args.board)
    offsets = args.offsets or board.default_offsets
    net = modelfile.load(args.file)
    lanes = args.lanes or net.lanes
    images = dataset_for(net, args.dataset, args.data_path).test.images[:args.samples]
    print(f"synthesizing the accelerator for the {board.device} (P={lanes}, offsets={offsets}"
          f"{', layer 1 unrolled' if args.unrolled else ''}), then {len(images)} images on Icarus ...", flush=True)
    try:
        r = check_netlist(args.file, images, lanes, board.family, board.placement(offsets, args.unrolled),
                          offsets=offsets, unrolled=args.unrolled)
    except CapacityError as exc:
        raise QpsnnError(str(exc)) from None
    exact = r.mismatch_count == 0 and len(r.results) == len(images)
    cycles = sum(row["cycles"] for row in r.results)
    print(f"{len(r.results)} samples on the {board.family} netlist: "
          f"{'bit-exact' if exact else str(r.mismatch_count) + ' MISMATCHES'}; {cycles} cycles "
          f"(cycle model {sum(row['expected_cycles'] for row in r.results)}), {r.sim_seconds:.0f} s simulated")
    for mm in r.mismatches[:10]:
        print(f"  mismatch: {mm}")
    return 0 if exact else 1


def cmd_bench_density(args) -> int:
    require_extra("bench-density", "hw", *HW)
    from .density import density_benchmark

    summary = density_benchmark(args.file, args.out, args.samples, args.lanes, args.simulator, offsets=args.offsets)
    print(json.dumps(summary, indent=1))
    return 0


def cmd_serve_sim(args) -> int:
    require_extra("serve-sim", "hw", *HW)
    if args.link == "pcie":  # the hard block's model and the root complex
        require_extra("serve-sim --link pcie", "pcie", "cocotbext.axi", "cocotbext.pcie")
    from pathlib import Path

    from qpsnn.sw.errors import QpsnnError

    from qpsnn.sw import modelfile

    from .serve import serve

    if not Path(args.file).exists():
        raise QpsnnError(f"{args.file}: no such model file (the accelerator is generated for a model: qpsnn demo makes one)")
    modelfile.load(args.file)  # refused before the simulator is built
    if args.port:
        _check_port_free(args.port)
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


def _check_port_free(port: int) -> None:
    import socket

    from qpsnn.sw.errors import QpsnnError

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise QpsnnError(f"--port {port}: cannot listen there ({exc.strerror}); choose another or 0 for any free one") from None


def cmd_bench_link(args) -> int:
    require_extra("bench-link", "hw", *HW)
    from .link_check import check_link

    report = check_link(args.file, args.frames, args.samples, args.seed, args.simulator)
    print(json.dumps(report, indent=1))
    fuzz = report["fuzz"]
    ok = report["after"]["identify"] and report["after"]["agree"] == report["after"]["samples"] \
        and report["after"]["result_again"] \
        and fuzz["bad_replies"] == 0 and fuzz["lockouts"] == fuzz["hangs"] == 0 \
        and fuzz["checks_exact"] == fuzz["episodes"]
    return 0 if ok else 1


def _offsets(p) -> None:
    from qpsnn.hw.geometry import DEFAULT_OFFSETS, OFFSET_CHOICES

    p.add_argument("--offsets", type=int, choices=OFFSET_CHOICES, default=DEFAULT_OFFSETS,
                   help=f"kernel offsets a conv layer updates per cycle: 9 = kernel-parallel (default), 1 = serial "
                        f"(the iCE40 build)")


def _unrolled(p) -> None:
    p.add_argument("--unrolled", action="store_true",
                   help="run layer 1 (a hidden conv layer) time-unrolled and dense: no membranes, no queues "
                        "(the iCEBreaker's MNIST build)")


def _lanes(p) -> None:
    p.add_argument("--lanes", type=opt.lanes,
                   help=f"P, output neurons updated per cycle: a power of two up to {opt.MAX_LANES} (default: the file's)")


def _host_simulator(p) -> None:
    p.add_argument("--simulator", choices=("verilator",), default="verilator",
                   help="verilator only: under Icarus the host link's top level does not answer (not yet found why)")


def register(sub) -> None:
    from qpsnn.hw.boards import BOARDS

    from .toolchain import SIMULATORS

    p = sub.add_parser("sim", help="run test images through the RTL (cocotb) and compare with the golden model")
    p.add_argument("file")
    p.add_argument("--simulator", choices=SIMULATORS, default="verilator")
    p.add_argument("--samples", type=opt.samples, help="only the first N test images (default: all)")
    _lanes(p)
    _offsets(p)
    _unrolled(p)
    p.add_argument("--waves", action="store_true", help="keep a waveform file of the run")
    p.add_argument("--jobs", type=opt.jobs, default=1,
                   help="simulator processes at once, each on its share of the images (default 1); one build")
    p.add_argument("--dataset", help="data set (default: the one the model was trained on)")
    p.add_argument("--data-path")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser("postsynth", help="the accelerator as yosys synthesizes it for a board, simulated gate by "
                                         "gate (Icarus, yosys's cell models) against the golden model")
    p.add_argument("file")
    p.add_argument("--board", required=True, choices=sorted(BOARDS))
    p.add_argument("--samples", type=opt.samples, default=2, help="test images (default 2: gate level is slow)")
    _lanes(p)
    p.add_argument("--offsets", type=int, choices=(1, 9), help="kernel offsets per cycle (default: the board's)")
    _unrolled(p)
    p.add_argument("--dataset", help="data set (default: the one the model was trained on)")
    p.add_argument("--data-path")
    p.set_defaults(func=cmd_postsynth)

    p = sub.add_parser("serve-sim", help="simulate the accelerator with its host link and serve it on a TCP port")
    p.add_argument("file", nargs="?", default="model.qpsnn", help="model whose accelerator to build (default model.qpsnn)")
    p.add_argument("--port", type=opt.port, default=0, help="TCP port, 0..65535 (default 0: any free one, printed)")
    _host_simulator(p)
    p.add_argument("--link", choices=("uart", "mmio", "pcie"), default="uart",
                   help="uart: RX/TX pins (connect with socket://); mmio: the register window (mmio+socket://); "
                        "pcie: the window on BAR0 behind a modelled PCIe block and root complex (mmio+socket://)")
    _lanes(p)
    _offsets(p)
    p.add_argument("--clients", type=opt.clients, help="stop after serving this many clients (default: serve until stopped)")
    p.add_argument("--max-payload", type=opt.max_payload, default=1024,
                   help="the frame buffer in bytes (default 1024; the iCEBreaker build uses 512)")
    p.set_defaults(func=cmd_serve_sim)

    p = sub.add_parser("bench-link", help="host link: every error reply, a cut frame, N fuzz frames in episodes "
                                          "(clients leaving at random, each followed by a fresh client's exact check)")
    p.add_argument("file")
    p.add_argument("--frames", type=opt.frames, default=10000, help="fuzz frames (default 10,000; CI runs 1,000)")
    p.add_argument("--samples", type=opt.samples, default=4, help="samples classified after the fuzz")
    p.add_argument("--seed", type=opt.seed, default=1)
    _host_simulator(p)
    p.set_defaults(func=cmd_bench_link)

    p = sub.add_parser("bench-density", help="RTL cycles against events at three spike densities (plot + JSON)")
    p.add_argument("file")
    p.add_argument("--samples", type=opt.samples, default=20, help="images per density (default 20)")
    _lanes(p)
    _offsets(p)
    p.add_argument("--simulator", choices=SIMULATORS, default="verilator")
    p.add_argument("--out", type=opt.output_dir, default="runs/density")
    p.set_defaults(func=cmd_bench_density)
