"""Machine-readable benchmark records: every published figure goes to bench/results.json.

Benchmarks call :func:`record`; nobody edits results.json by hand. A record:
  name, metric, value, baseline, baseline_value, ratio (= value / baseline_value, or the
  inverse for times: see higher_is_better), date, gpu, versions, command.
Records with the same (name, metric, gpu) replace older ones.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path

import torch

RESULTS = Path(os.environ.get("SOLRL_BENCH_RESULTS", Path(__file__).with_name("results.json")))


def environment() -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    return {
        "gpu": gpu,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "triton": triton_version,
        },
    }


def command_line() -> str:
    return os.environ.get("SOLRL_BENCH_COMMAND") or " ".join([Path(sys.executable).name, *sys.argv])


def record(
    name: str,
    metric: str,
    value: float,
    baseline: str,
    baseline_value: float,
    higher_is_better: bool = True,
    **extra,
) -> dict:
    """Append (or replace) one figure in bench/results.json and return the record."""
    env = environment()
    ratio = value / baseline_value if higher_is_better else baseline_value / value
    rec = {
        "name": name,
        "metric": metric,
        "value": float(value),
        "baseline": baseline,
        "baseline_value": float(baseline_value),
        "ratio": float(ratio),
        "date": datetime.date.today().isoformat(),
        "gpu": env["gpu"],
        "versions": env["versions"],
        "command": command_line(),
        **extra,
    }
    rows = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    key = (name, metric, rec["gpu"])
    rows = [r for r in rows if (r["name"], r["metric"], r["gpu"]) != key] + [rec]
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    tmp.replace(RESULTS)
    return rec
