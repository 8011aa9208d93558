"""Run the host-link bench (`sim/link_bench.py`): every error reply, a cut frame, a fuzz of N frames, then
identify and samples checked against the golden model. `qpsnn bench-link` and the test suite call it."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from qpsnn.sw import modelfile
from qpsnn.sw.evaluate import dataset_for

from qpsnn.sw.progress import Reporter

from .serve import run_host_bench


def check_link(path: str | Path, frames: int = 1000, samples: int = 2, seed: int = 1,
               simulator: str = "verilator", reporter: Reporter | None = None) -> dict:
    reporter = reporter or Reporter()
    net = modelfile.load(path)
    images = dataset_for(net, None, None).test.images[:samples]
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "images.npy", np.ascontiguousarray(images, dtype=np.uint8))
        job = {"model": str(Path(path).resolve()), "images": str(Path(tmp) / "images.npy"), "fuzz_frames": frames,
               "seed": seed}
        with reporter.task(f"host-link fuzz on {simulator}, frames", frames) as advance:
            done = [0]

            def progress(value: int) -> None:
                advance(value - done[0])
                done[0] = value
            return run_host_bench(net, None, "uart", simulator, "qpsnn.sim.link_bench", job, on_progress=progress)
