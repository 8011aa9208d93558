"""Issue 11: the simulation, evaluation and inference reports are dataclasses whose ``to_json()`` is what the CLI
prints with ``--json``, with the keys it printed before they were dataclasses (README commands and users' scripts
read them)."""
import json
from dataclasses import fields

import pytest

from qpsnn.sim.simulate import SimReport
from qpsnn.sw.evaluate import EvalReport, evaluate
from qpsnn.sw.infer import InferReport

EVAL_KEYS = ["model", "dataset", "samples", "accuracy_int", "accuracy_float", "weight_bytes", "file_bytes",
             "spikes_per_sample", "sops_per_sample"]
INFER_KEYS = ["model", "device", "samples", "accuracy", "agree_with_golden", "cycles_mean", "bytes_sent",
              "bytes_received", "retries", "load_bytes_sent", "load_bytes_received", "load_frames",
              "link_bytes_per_sample", "load_seconds_at_baud", "link_images_per_second_at_baud", "seconds"]
SIM_KEYS = ["model", "simulator", "lanes", "offsets", "samples", "mismatches", "bit_exact", "cycles_total",
            "bound_cycles_total", "cycles_over_bound", "events_total", "sim_seconds", "first_mismatches", "waves",
            "build_dir", "jobs"]

EVAL = EvalReport(model="m.qpsnn", dataset="digits", samples=360, accuracy_int=98.3333, accuracy_float=None,
                  weight_bytes=1234, file_bytes=2345, spikes_per_sample=12.5, sops_per_sample=345.25)
INFER = InferReport(model="m.qpsnn", device="socket://127.0.0.1:7777", samples=2, accuracy=100.0, agree_with_golden=2,
                    cycles_mean=2815.7, bytes_sent=100, bytes_received=90, retries=0, load_bytes_sent=50,
                    load_bytes_received=40, load_frames=3, link_bytes_per_sample=50.0,
                    load_seconds_at_baud={"115200": 0.0078, "3000000": 0.0003},
                    link_images_per_second_at_baud={"115200": 230.4, "3000000": 6000.0}, seconds=0.5)
SIM = SimReport(model="m.qpsnn", simulator="verilator", lanes=8, offsets=9, samples=3, mismatches=0, bit_exact=True,
                cycles_total=3000, bound_cycles_total=2900, cycles_over_bound=1.03448, events_total=700,
                sim_seconds=1.5, first_mismatches=[], waves=None, build_dir="sim_build/x", jobs=1)


@pytest.mark.parametrize("report, keys", [(EVAL, EVAL_KEYS), (INFER, INFER_KEYS), (SIM, SIM_KEYS)],
                         ids=["eval", "infer", "sim"])
def test_to_json_has_the_keys_of_before_and_round_trips(report, keys):
    data = report.to_json()
    assert list(data) == keys
    assert json.loads(json.dumps(data)) == data
    assert type(report)(**json.loads(json.dumps(data))) == report  # every field is in the JSON, unchanged


def test_sim_details_add_per_sample_only_when_asked():
    from dataclasses import replace

    rows = [{"sample": 0, "cycles": 1000, "bound_cycles": 990, "events": 230}]
    assert "per_sample" not in SIM.to_json()
    data = replace(SIM, per_sample=rows).to_json()
    assert list(data) == SIM_KEYS + ["per_sample"] and json.loads(json.dumps(data))["per_sample"] == rows
    assert [f.name for f in fields(SimReport)] == SIM_KEYS + ["per_sample", "unrolled"]


def test_sim_report_says_unrolled_only_for_an_unrolled_run():
    from dataclasses import replace

    assert "unrolled" not in SIM.to_json()
    data = replace(SIM, unrolled=True).to_json()
    assert list(data) == SIM_KEYS + ["unrolled"] and data["unrolled"] is True


def test_evaluate_returns_the_report_the_cli_prints(trained_digits, capsys):
    from qpsnn.sw.cli import main

    _, _, path = trained_digits
    report = evaluate(path, samples=40)
    assert isinstance(report, EvalReport) and report.samples == 40 and 0 <= report.accuracy_int <= 100
    assert main(["eval", str(path), "--samples", "40", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(report.to_json()))
