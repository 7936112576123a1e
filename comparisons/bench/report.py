"""What `refmask bench` prints: the environment, one table per case and the Markdown table."""

from __future__ import annotations

import datetime
import os
import platform
from typing import Any

from .cases import CASE_TITLES
from .modes import FULL, Sizes
from .rows import Row, fmt, fmt_ratio


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return "not installed"


def environment(backends: dict[str, str]) -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    threads = ""
    if backends.get("torch") == "":  # available: it is imported anyway
        import torch

        threads = f" (torch threads: {torch.get_num_threads()})"
    versions = ", ".join(
        f"{name} {_version(dist)}"
        for name, dist in (("refmask", "refmask"), ("numpy", "numpy"), ("jax", "jax"), ("jaxlib", "jaxlib"),
                           ("flax", "flax"), ("torch", "torch"))
    )
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}",
        "versions": f"Python {platform.python_version()}, {versions}{threads}",
    }


def _case_size(sizes: Sizes, case: int) -> Any:
    return {1: sizes.softmax, 2: sizes.attention, 3: sizes.small, 4: sizes.memory_len, 5: sizes.masks}[case]


def _shape_note(sizes: Sizes, case: int) -> str:
    """Where a mode's shapes are not the full mode's (the ones docs/benchmarks.md reports), says so."""
    full, mine = _case_size(FULL, case), _case_size(sizes, case)
    if mine == full:
        return ""
    return f"  [{sizes.name} mode: smaller than full mode's {full}]"


def print_case(case: int, rows: list[Row], sizes: Sizes, seconds: float, out: Any) -> None:
    b, t = sizes.masks
    shape = {1: sizes.softmax, 2: sizes.attention, 3: sizes.small,
             4: (1, 1, sizes.memory_len, sizes.memory_len, 64), 5: (b, 1, t, t)}
    print(f"\ncase {case}: {CASE_TITLES[case]} {shape[case]}{_shape_note(sizes, case)}  ({seconds:.0f} s)", file=out)
    header = f"  {'backend':<7} {'refmask':>10} {'reference':>10} {'ratio':>7}  {'target':<14} {'result':<7} what"
    print(header, file=out)
    for row in rows:
        if row.skipped:
            print(f"  {row.backend:<7} {'':>10} {'':>10} {'':>7}  {row.target:<14} {'skipped':<7} "
                  f"{row.subject}: {row.skipped}", file=out)
            continue
        what = row.subject if row.ref_value is None else f"{row.subject} vs {row.reference}"
        line = (f"  {row.backend:<7} {fmt(row.value, row.unit):>10} {fmt(row.ref_value, row.unit):>10} "
                f"{fmt_ratio(row):>7}  {row.target:<14} {row.result:<7} {what}")
        print(line + (f" ({row.note})" if row.note else ""), file=out)


def markdown(rows: list[Row], env: dict[str, str], sizes: Sizes) -> str:
    lines = [
        f"Measured {env['date']} on {env['machine']}; {env['versions']}; `refmask bench` ({sizes.name} mode), "
        "medians of interleaved repeats, ratio = refmask / reference.",
        "",
        "| case | backend | refmask | reference | refmask | reference | ratio | target | result |",
        "|---|---|---|---|---:|---:|---:|---|---|",
    ]
    for row in rows:
        if row.skipped:
            lines.append(f"| {row.case} | {row.backend} | {row.subject} | {row.reference} | | | | "
                         f"{row.target} | skipped: {row.skipped} |")
            continue
        value = fmt(row.value, row.unit) + (f" ({row.note})" if row.note else "")
        lines.append(
            f"| {row.case} | {row.backend} | {row.subject} | {row.reference} | {value} | "
            f"{fmt(row.ref_value, row.unit)} | {fmt_ratio(row)} | {row.target} | {row.result} |"
        )
    return "\n".join(lines)
