"""Benchmark: total cycles against total events at three spike densities, measured on the RTL.

The same model is run with its thresholds scaled (x0.5, x1, x2: more or fewer spikes); every sample's
RTL cycle count is plotted against its event count with a least-squares line. An event-driven design's
cycles follow events; a dense one's would be the same for every sample."""
from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import numpy as np

from qpsnn.sw import modelfile
from qpsnn.sw.evaluate import dataset_for
from qpsnn.sw.progress import Reporter

from qpsnn.hw.geometry import DEFAULT_OFFSETS

from .runner import run_bench

SCALES = (0.5, 1.0, 2.0)


def scaled(net, factor: float):
    out = copy.deepcopy(net)
    for layer in out.layers:
        if layer.threshold is not None:
            layer.threshold = (layer.threshold.double() * factor).round().clamp_min(1).to(layer.threshold.dtype)
    return out


def density_benchmark(path: str | Path, out_dir: str | Path, samples: int = 20, lanes: int | None = None,
                      simulator: str = "verilator", reporter: Reporter | None = None,
                      offsets: int = DEFAULT_OFFSETS) -> dict:
    reporter = reporter or Reporter()
    net = modelfile.load(path)
    lanes = lanes or net.lanes
    images = np.ascontiguousarray(dataset_for(net, None, None).test.images[:samples])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    with reporter.task("density benchmark", len(SCALES)) as advance, tempfile.TemporaryDirectory() as tmp:
        for factor in SCALES:
            variant = scaled(net, factor)
            vpath = Path(tmp) / f"x{factor}.qpsnn"
            modelfile.save(variant, vpath)
            result = run_bench(vpath, variant, images, simulator, lanes, offsets=offsets)
            if result.mismatch_count:
                raise AssertionError(f"threshold x{factor}: {result.mismatch_count} RTL mismatches")
            rows += [{"threshold_scale": factor, "events": r["events"], "cycles": r["cycles"],
                      "bound_cycles": r["bound_cycles"]} for r in result.results]
            advance(1, f"x{factor}: {np.mean([r['events'] for r in result.results]):.0f} events/sample")
    ev = np.array([r["events"] for r in rows], dtype=float)
    cy = np.array([r["cycles"] for r in rows], dtype=float)
    slope, intercept = np.polyfit(ev, cy, 1)
    pred = slope * ev + intercept
    r2 = 1 - ((cy - pred) ** 2).sum() / ((cy - cy.mean()) ** 2).sum()
    summary = {"model": str(path), "lanes": lanes, "offsets": offsets, "samples_per_density": samples, "slope_cycles_per_event": slope,
               "intercept_cycles": intercept, "r2": r2, "neurons": sum(l.channels * int(np.prod(l.neuron_shape[1:])) for l in net.layers),
               "per_density": {str(f): {"events_mean": float(np.mean([r["events"] for r in rows if r["threshold_scale"] == f])),
                                        "cycles_mean": float(np.mean([r["cycles"] for r in rows if r["threshold_scale"] == f]))}
                               for f in SCALES}}
    (out_dir / "density.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    _plot(rows, slope, intercept, r2, out_dir / "cycles_vs_events.png")
    return summary


def _plot(rows, slope, intercept, r2, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for factor, marker in zip(SCALES, "o^s"):
        pts = [r for r in rows if r["threshold_scale"] == factor]
        ax.scatter([r["events"] for r in pts], [r["cycles"] for r in pts], marker=marker, alpha=0.8,
                   label=f"thresholds x{factor}")
    xs = np.linspace(0, max(r["events"] for r in rows) * 1.05, 50)
    ax.plot(xs, slope * xs + intercept, "k--", lw=1, label=f"fit: {slope:.1f} cycles/event + {intercept:.0f} (R²={r2:.4f})")
    ax.set_xlabel("events per sample (input bit-plane events + spikes)")
    ax.set_ylabel("RTL cycles per sample")
    ax.set_title("Cycles follow events (Verilator, every sample bit-exact)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
