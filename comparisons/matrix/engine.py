"""The whole matrix: every loaded path on every chosen case, as a JSON-ready dict (see render.py)."""

from __future__ import annotations

import datetime
import platform
import shutil
import sys
import time
from dataclasses import asdict
from typing import Any

import numpy as np

from ..cases import all_cases
from .evaluate import evaluate
from .frameworks import load_paths

FORMAT_VERSION = 1


class Progress:
    """A one-line progress bar on stderr, never wider than the terminal (its last column left free, so the
    line cannot wrap): the bar, the count, then as much of the label as fits."""

    def __init__(self, total: int, enabled: bool, width: int = 30):
        self.total, self.enabled, self.width, self.done = total, enabled, width, 0
        self.columns = max(shutil.get_terminal_size((80, 24)).columns - 1, 20)

    def step(self, label: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        count = f"{self.done}/{self.total}"
        bar_width = max(5, min(self.width, self.columns - len(count) - 24))
        filled = bar_width * self.done // max(self.total, 1)
        line = f"{'█' * filled}{'░' * (bar_width - filled)} {count} "
        room = self.columns - len(line)
        if len(label) > room:
            label = label[:max(room - 1, 0)] + "…"
        sys.stderr.write("\r" + (line + label).ljust(self.columns))
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * self.columns + "\r")
            sys.stderr.flush()


def run_matrix(
    frameworks: list[str] | None = None,
    paths_filter: list[str] | None = None,
    cases_filter: list[str] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The matrix as a JSON-ready dict (see render.py)."""
    started = time.perf_counter()
    paths, skipped, versions = load_paths(frameworks)
    if paths_filter:
        paths = [p for p in paths if any(f in p.id for f in paths_filter)]
    cases = [c for c in all_cases() if not cases_filter or c.id in cases_filter]
    bar = Progress(len(paths) * len(cases), progress)
    cells = []
    with np.errstate(all="ignore"):
        for path in paths:
            for case in cases:
                bar.step(f"{path.id} × {case.id}")
                cells.append(asdict(evaluate(path, case)))
    bar.close()
    return {
        "refmask_compare": FORMAT_VERSION,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "runtime_s": round(time.perf_counter() - started, 1),
        "versions": versions,
        "platform": f"Python {platform.python_version()}, {platform.machine()} CPU",
        "skipped": skipped,
        "cases": [{"id": c.id, "title": c.title, "dtype": c.dtype, "notes": c.notes} for c in cases],
        "paths": [{"id": p.id, "framework": p.framework, "title": p.title, "convention": p.convention}
                  for p in paths],
        "cells": cells,
    }
