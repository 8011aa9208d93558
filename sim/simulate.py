"""``qpsnn sim``: run a model file's test images through the RTL and report bit-exactness and cycles."""
from __future__ import annotations

import copy
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qpsnn.sw import modelfile
from qpsnn.sw.evaluate import dataset_for
from qpsnn.sw.progress import Reporter
from qpsnn.sw.reports import OPTIONAL, Report

from qpsnn.hw.geometry import DEFAULT_OFFSETS

from .runner import TOP, BenchResult, build_design, generate_verilog, run_built


@dataclass
class SimReport(Report):
    """``qpsnn sim``: the RTL against the golden model, and its cycles against the cycle model's bound.
    ``per_sample`` (every sample's row) is there only when asked for (``details``)."""
    model: str
    simulator: str
    lanes: int
    offsets: int
    samples: int
    mismatches: int
    bit_exact: bool
    cycles_total: int
    bound_cycles_total: int
    cycles_over_bound: float | None
    events_total: int
    sim_seconds: float
    first_mismatches: list
    waves: str | None
    build_dir: str
    jobs: int
    per_sample: list | None = field(default=None, metadata=OPTIONAL)
    unrolled: bool | None = field(default=None, metadata=OPTIONAL)  # True: layer 1 time-unrolled (`--unrolled`)


def simulate(path: str | Path, simulator: str = "verilator", samples: int | None = None, lanes: int | None = None,
             waves: bool = False, dataset: str | None = None, data_path: str | None = None, chunk: int = 40,
             forwarding: bool = True, reporter: Reporter | None = None, offsets: int = DEFAULT_OFFSETS,
             jobs: int = 1, details: bool = False, unrolled: bool = False) -> SimReport:
    """The model's test images through the RTL, ``chunk`` images a simulator run. ``jobs`` simulator processes
    run chunks at once (the design is built once, each job runs in its own folder of the build); results are
    merged in sample order, so the report is the one job's (``details`` adds every sample's row)."""
    from qpsnn.sw.errors import QpsnnError

    if jobs > 1 and waves:
        raise QpsnnError("--waves keeps one waveform of one simulator run: use it with --jobs 1")
    reporter = reporter or Reporter()
    net = modelfile.load(path)
    lanes = lanes or net.lanes
    images = dataset_for(net, dataset, data_path).test.images
    if samples is not None:
        images = images[:samples]
    chunks = jobs * -(-len(images) // (jobs * chunk))  # a multiple of the jobs, so that they finish together
    chunk = max(1, -(-len(images) // chunks))
    starts = list(range(0, len(images), chunk))
    runner, build = build_design(generate_verilog(net, lanes, forwarding, offsets, unrolled=unrolled), TOP, simulator, waves)

    def run(start: int) -> BenchResult:
        part = np.ascontiguousarray(images[start:start + chunk])
        if jobs == 1:
            return run_built(runner, build, path, part, lanes, offsets, waves, unrolled=unrolled)
        # a runner object per run (a runner keeps its run's settings), copied from the one that built the design
        return run_built(copy.deepcopy(runner), build, path, part, lanes, offsets, test_dir=build / f"job-{start}",
                         threads=max(1, (os.cpu_count() or 1) // jobs), unrolled=unrolled)

    done: dict[int, BenchResult] = {}
    count = 0
    with reporter.task(f"{simulator} bench, P={lanes}, {offsets} kernel offset(s) per cycle"
                       f"{', layer 1 unrolled' if unrolled else ''}, {jobs} job(s)",
                       len(images)) as advance, ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run, start): start for start in starts}
        for future in as_completed(futures):
            start = futures[future]
            r = done[start] = future.result()
            count += r.mismatch_count
            advance(len(r.results), f"{count} mismatches")
    results, mismatches, seconds, wave = [], [], 0.0, None
    for start in starts:  # sample order, whatever order the jobs finished in
        r = done[start]
        for row in r.results:
            row["sample"] += start
        for mm in r.mismatches:
            mm["sample"] = mm.get("sample", 0) + start
        results += r.results
        mismatches += r.mismatches
        seconds += r.sim_seconds
        wave = r.waves or wave
    cycles = sum(r["cycles"] for r in results)
    bound = sum(r["bound_cycles"] for r in results)
    return SimReport(
        model=str(path), simulator=simulator, lanes=lanes, offsets=offsets,
        samples=len(results), mismatches=count, bit_exact=count == 0 and len(results) == len(images),
        cycles_total=cycles, bound_cycles_total=bound,
        cycles_over_bound=round(cycles / bound, 5) if bound else None,
        events_total=sum(r["events"] for r in results), sim_seconds=round(seconds, 3),
        first_mismatches=mismatches[:10], waves=wave, build_dir=str(build), jobs=jobs,
        per_sample=results if details else None, unrolled=True if unrolled else None,
    )
