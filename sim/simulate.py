"""``qpsnn sim``: run a model file's test images through the RTL and report bit-exactness and cycles."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from qpsnn.sw import modelfile
from qpsnn.sw.evaluate import dataset_for
from qpsnn.sw.progress import Reporter

from qpsnn.hw.geometry import DEFAULT_OFFSETS

from .runner import run_bench


def simulate(path: str | Path, simulator: str = "verilator", samples: int | None = None, lanes: int | None = None,
             waves: bool = False, dataset: str | None = None, data_path: str | None = None, chunk: int = 40,
             forwarding: bool = True, reporter: Reporter | None = None, offsets: int = DEFAULT_OFFSETS) -> dict:
    reporter = reporter or Reporter()
    net = modelfile.load(path)
    lanes = lanes or net.lanes
    images = dataset_for(net, dataset, data_path).test.images
    if samples is not None:
        images = images[:samples]
    results, mismatches, count, seconds, wave, build = [], [], 0, 0.0, None, None
    with reporter.task(f"{simulator} bench, P={lanes}, {offsets} kernel offset(s) per cycle", len(images)) as advance:
        for start in range(0, len(images), chunk):
            part = np.ascontiguousarray(images[start:start + chunk])
            r = run_bench(path, net, part, simulator, lanes, waves, forwarding, offsets=offsets)
            for row in r.results:
                row["sample"] += start
            for mm in r.mismatches:
                mm["sample"] = mm.get("sample", 0) + start
            results += r.results
            mismatches += r.mismatches
            count += r.mismatch_count
            seconds += r.sim_seconds
            wave, build = r.waves or wave, r.build_dir
            exact = sum(1 for _ in results) - len({m["sample"] for m in mismatches})
            advance(len(part), f"{count} mismatches, {exact} samples exact")
    cycles = sum(r["cycles"] for r in results)
    bound = sum(r["bound_cycles"] for r in results)
    return {
        "model": str(path), "simulator": simulator, "lanes": lanes, "offsets": offsets,
        "samples": len(results), "mismatches": count, "bit_exact": count == 0 and len(results) == len(images),
        "cycles_total": cycles, "bound_cycles_total": bound,
        "cycles_over_bound": round(cycles / bound, 5) if bound else None,
        "events_total": sum(r["events"] for r in results), "sim_seconds": round(seconds, 3),
        "first_mismatches": mismatches[:10], "waves": wave, "build_dir": build,
    }
