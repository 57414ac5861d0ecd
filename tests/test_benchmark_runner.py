"""The benchmark orchestrator's bookkeeping (no model is run: workers are never started here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture()
def run_module(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    sys.modules.pop("run", None)
    import run

    yield run
    sys.modules.pop("run", None)


def test_resume_reuses_recorded_results_and_records_new_ones(run_module, tmp_path: Path) -> None:
    """An interrupted run keeps what it measured: ``--resume`` reuses it instead of rerunning."""
    run = run_module
    run.PROGRESS = tmp_path / "r.progress.jsonl"
    label = "bench_ours.py rollout --repeats 5 --device cuda --dtype bfloat16"
    run.RESUMED[label] = {"mode": "rollout", "cmd": label, "ours_s": 1.5}
    missing_python = tmp_path / "no-such-python"  # starting a worker would fail loudly
    reused = run.run_worker(missing_python, "bench_ours.py", label.split()[1:], timeout=5)
    assert reused["ours_s"] == 1.5
    assert label not in run.RESUMED  # each recorded result is used once
    with pytest.raises(FileNotFoundError):
        run.run_worker(missing_python, "bench_ours.py", label.split()[1:], timeout=5)


def test_worker_results_are_appended_to_the_progress_file(run_module, tmp_path: Path) -> None:
    run = run_module
    run.PROGRESS = tmp_path / "r.progress.jsonl"
    worker = tmp_path / "worker.py"
    worker.write_text('print("BENCH_JSON: " + \'{"mode": "env", "value": 3}\')\n')
    result = run.run_worker(sys.executable, str(worker), ["--flag"], timeout=60)
    assert result["value"] == 3
    recorded = [json.loads(line) for line in run.PROGRESS.read_text().splitlines()]
    assert recorded == [result]
    assert recorded[0]["cmd"] == f"{worker} --flag"


def test_backend_arguments_reach_every_worker(run_module) -> None:
    run = run_module
    gpu = run.Backend("cuda", "bfloat16")
    assert gpu.args == ["--device", "cuda", "--dtype", "bfloat16"]
    assert not gpu.is_default and run.Backend().is_default


def test_render_rebuilds_the_tables_of_a_recorded_run(run_module, tmp_path: Path) -> None:
    """``--render`` recomputes summary and tables from a results JSON, measuring nothing."""
    run = run_module
    recorded = json.loads((BENCH_DIR / "results.json").read_text())
    path = tmp_path / "results.json"
    recorded["summary"] = {}
    path.write_text(json.dumps(recorded))
    assert run.main(["--render", str(path)]) == 0
    summary = json.loads(path.read_text())["summary"]
    rollout = summary["rollout_vs_generate"]
    assert rollout == pytest.approx(recorded["results"]["rollout"]["ratio"])
    target = next(t for t in summary["targets"] if t["target"].startswith("rollout"))
    assert target["shown"] == f"{rollout:.3f}x" and target["met"] == (rollout >= 1.0)
    assert f"| {target['shown']} |" in path.with_suffix(".md").read_text()
