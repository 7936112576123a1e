"""The conformance matrix of the GPU paths, over every case of comparisons.cases.all_cases(), as
comparisons/RESULTS-cuda.md (and JSON).

Its registry, GPU_FRAMEWORKS, is its own and not `refmask compare`'s (comparisons/matrix/frameworks.py):
these rows need a GPU, and the CPU matrix (comparisons/RESULTS.md, expected.json) must not change with
the machine. Each cell is comparisons.matrix.evaluate.evaluate, as in the CPU matrix. Without a CUDA
device every path's cells are "not expressible: no CUDA device".

`python -m comparisons.gpu.matrix --output FILE [--json FILE] [--case ID] [--path SUBSTRING] [--budget S]`:
with --budget, cells still to run after S seconds are recorded as not run, and the files are rewritten
after each path, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np

from refmask._backends import missing_dependency

from .._base import Path
from ..cases import all_cases
from ..matrix.cell import Cell
from ..matrix.engine import FORMAT_VERSION
from ..matrix.evaluate import evaluate
from ..matrix.frameworks import Framework
from ..matrix.render import render_markdown
from . import device as gpu_device

# In the order they run: flex_attention's compiles, the slowest, last.
GPU_FRAMEWORKS = {
    "torch-cuda": Framework(("torch",), "torch", "comparisons.gpu.torch_cuda_paths"),
    "jax-gpu": Framework(("jax",), "jax", "comparisons.gpu.jax_gpu_paths"),
    "torch-cuda-compile": Framework(("torch",), "torch", "comparisons.gpu.flex_cuda_paths"),
}
NOT_RUN = "not run: the matrix's time budget was spent"
COMMAND = "python -m comparisons.gpu"


def load_gpu_paths() -> tuple[list[Path], list[dict[str, str]], dict[str, str]]:
    """The GPU paths whose framework is installed, the skipped frameworks (with why) and the versions."""
    paths: list[Path] = []
    skipped: list[dict[str, str]] = []
    versions = {"numpy": np.__version__}
    for name, framework in GPU_FRAMEWORKS.items():
        what = f"the GPU paths of {name}"
        why = next((w for m in framework.modules if (w := missing_dependency(m, framework.extra, what))), None)
        if why is None:
            try:
                module = importlib.import_module(framework.adapters)
            except Exception as err:  # installed but broken: say so, run the rest
                why = f"import failed: {type(err).__name__}: {err}"[:200]
        if why is not None:
            skipped.append({"framework": name, "reason": why})
            continue
        versions[name] = module.FRAMEWORK_VERSION
        paths.extend(module.PATHS)
    return paths, skipped, versions


def select(paths: list[Path], path_filter: list[str] | None, case_filter: list[str] | None) -> tuple[list, list]:
    """The chosen paths (id contains a --path substring) and cases (--case ids); ValueError naming the
    option when a filter matches nothing."""
    cases = all_cases()
    unknown = [c for c in case_filter or [] if c not in {case.id for case in cases}]
    if unknown:
        raise ValueError(f"--case: no case {', '.join(map(repr, unknown))}; the cases are: "
                         f"{', '.join(c.id for c in cases)}")
    chosen = [p for p in paths if not path_filter or any(f in p.id for f in path_filter)]
    if path_filter and not chosen:
        raise ValueError(f"--path: {' or '.join(map(repr, path_filter))} matches no GPU path; they are: "
                         f"{', '.join(p.id for p in paths) or 'none (torch and jax missing)'}")
    return chosen, [c for c in cases if not case_filter or c.id in case_filter]


def run_gpu_matrix(
    info: dict[str, Any],
    path_filter: list[str] | None = None,
    case_filter: list[str] | None = None,
    budget_s: float | None = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """The GPU matrix as a JSON-ready dict in `refmask compare`'s format (render.py reads it), plus
    "device" (`info`, device.describe()'s) and "partial" (paths not run yet, while it runs)."""
    started = time.perf_counter()
    all_paths, skipped, versions = load_gpu_paths()
    paths, cases = select(all_paths, path_filter, case_filter)
    gpu = info.get("torch_gpu") or info.get("jax_gpu") or gpu_device.NO_CUDA
    result: dict[str, Any] = {
        "refmask_compare": FORMAT_VERSION,
        "date": info["date"],
        "runtime_s": 0.0,
        "versions": versions,
        "platform": f"Python {info['python']}, {gpu}",
        "skipped": skipped,
        "cases": [{"id": c.id, "title": c.title, "dtype": c.dtype, "notes": c.notes} for c in cases],
        "paths": [],
        "cells": [],
        "device": info,
        "partial": len(paths),
    }
    with np.errstate(all="ignore"):
        for path in paths:
            for case in cases:
                late = budget_s is not None and time.perf_counter() - started > budget_s
                cell = Cell(path.id, case.id, "not expressible", reason=NOT_RUN) if late else evaluate(path, case)
                result["cells"].append(asdict(cell))
            result["paths"].append({"id": path.id, "framework": path.framework, "title": path.title,
                                    "convention": path.convention})
            result["partial"] -= 1
            result["runtime_s"] = round(time.perf_counter() - started, 1)
            if checkpoint is not None:
                checkpoint(result)
    return result


def _not_expressible(result: dict[str, Any]) -> list[str]:
    """One line per path and reason of its not-expressible cells (the table shows them as "–")."""
    reasons: dict[tuple[str, str], list[str]] = {}
    for c in result["cells"]:
        if c["status"] == "not expressible":
            reasons.setdefault((c["path"], c["reason"]), []).append(c["case"])
    return [f"- `{path}`: {reason} ({', '.join(cases)})" for (path, reason), cases in reasons.items()]


def render_results(result: dict[str, Any]) -> str:
    """RESULTS-cuda.md: the GPU and versions, then the matrix as render.py writes comparisons/RESULTS.md."""
    lines = [
        "# GPU paths against the refmask oracle",
        "",
        f"Generated by `{COMMAND}` on a machine with a CUDA GPU; do not edit by hand. docs/comparisons.md",
        "(\"On a GPU\") says how to run and read it; the CPU matrix is comparisons/RESULTS.md.",
        "",
        *gpu_device.header_lines(result["device"]),
        f"- matrix: {len(result['cells'])} cells in {result['runtime_s']} s; "
        "versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
    ]
    lines += [f"- skipped: {s['framework']} ({s['reason']})" for s in result["skipped"]]
    if result["partial"]:
        lines.append(f"- partial: {result['partial']} more paths were to run when this was written")
    not_run = sum(c["reason"] == NOT_RUN for c in result["cells"])
    if not_run:
        lines.append(f"- {not_run} cells not run: the matrix's time budget was spent (shown as –)")
    body = render_markdown(result, COMMAND)
    lines += ["", body[body.find("## Matrix"):].rstrip(), ""]
    reasons = _not_expressible(result)
    if reasons:
        lines += ["## Not expressible, and why", "", *reasons, ""]
    return "\n".join(lines)


def summary(result: dict[str, Any]) -> str:
    """One line: how many cells agree, differ, raised, cannot be stated, were not run."""
    counts: dict[str, int] = {}
    for c in result["cells"]:
        key = "not run" if c["reason"] == NOT_RUN else c["status"]
        counts[key] = counts.get(key, 0) + 1
    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    return f"matrix: {len(result['cells'])} cells ({parts or 'none'}) in {result['runtime_s']} s"


def write(result: dict[str, Any], output: str, json_output: str | None) -> None:
    """The Markdown report to `output`, the result as JSON to `json_output`."""
    with open(output, "w", encoding="utf-8") as f:
        f.write(render_results(result))
    if json_output:
        with open(json_output, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1, ensure_ascii=False)


def main(argv: list[str] | None = None) -> int:
    """Run the GPU matrix (or the selected part) and write it; 2 on a selection that matches nothing."""
    parser = argparse.ArgumentParser(prog="python -m comparisons.gpu.matrix", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, metavar="FILE", help="the Markdown report (RESULTS-cuda.md)")
    parser.add_argument("--json", metavar="FILE", help="also the result as JSON")
    parser.add_argument("--device-json", metavar="FILE", help="the GPU as `python -m comparisons.gpu.device` found it")
    parser.add_argument("--case", action="append", metavar="ID", help="only this case (repeatable)")
    parser.add_argument("--path", action="append", metavar="SUBSTRING", help="only paths whose id contains it")
    parser.add_argument("--budget", type=float, metavar="S", help="cells after S seconds are not run")
    args = parser.parse_args(argv)
    info = gpu_device.described(args.device_json)
    try:
        result = run_gpu_matrix(info, args.path, args.case, args.budget,
                                checkpoint=lambda r: write(r, args.output, args.json))
    except ValueError as err:
        print(f"{COMMAND}: {err}", file=sys.stderr)
        return 2
    write(result, args.output, args.json)
    print(f"{summary(result)}; wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
