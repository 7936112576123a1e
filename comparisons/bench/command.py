"""Benchmark refmask against the native paths it replaces: times, ratios and memory, side by side.

Full mode (no option) runs the shapes docs/benchmarks.md reports and prints the Markdown table of
the README; --quick is CI-sized (smaller shapes where noted, fewer repeats); --smoke runs tiny
shapes once, for the test suite, which only checks that every case runs.
Every time is the median of repeats taken round-robin in this one process (refmask and its native
reference alternate, the order rotating each repeat), so the ratio refmask / native stays
meaningful on a busy machine. Each case's targets are printed as PASS/FAIL; they are goals, not
tests: the command exits 0 whatever the times (--strict exits 1 on a FAIL). A backend whose
framework is not installed is reported as skipped, with what to install.
What each case measures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import time

from refmask._backends import BACKENDS, get_backend, unavailable_reason

from .cases import CASE_FUNCTIONS, CASES
from .modes import FULL, QUICK, SMOKE, Sizes
from .report import environment, markdown, print_case
from .rows import Row


def add_arguments(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="CI-sized run: smaller attention shapes, fewer repeats")
    mode.add_argument("--smoke", action="store_true", help="tiny shapes, 1 repeat: checks that every case runs")
    parser.add_argument("--cases", default="1,2,3,4,5", help="comma-separated case numbers (default: all)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated backends (default: all)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per measurement (default: by mode)")
    parser.add_argument("--markdown", action="store_true", help="also print the Markdown table (always in full mode)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")


def backend_unavailable(name: str) -> str:
    """Why backend `name` cannot be benchmarked here (with what to install), or "" if it can."""
    why = unavailable_reason(name)
    if why is not None:
        return why
    try:
        get_backend(name)
    except Exception as err:  # installed but broken: reported as skipped, the rest still runs
        return f"refmask's {name} backend does not import: {type(err).__name__}: {err}"
    return ""


def _options(args: argparse.Namespace) -> tuple[Sizes, list[int], list[str]] | str:
    """The mode, cases and backends asked for, or what is wrong with them."""
    sizes = SMOKE if args.smoke else QUICK if args.quick else FULL
    if args.repeats is not None:
        sizes = Sizes(**{**sizes.__dict__, "repeats": max(1, args.repeats)})
    try:
        cases: list[int] | None = [int(c) for c in args.cases.split(",") if c.strip()]
    except ValueError:
        cases = None
    if cases is None or any(c not in CASES for c in cases):
        return f"--cases must list numbers among {CASES}; got {args.cases!r}"
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if any(b not in BACKENDS for b in backends):
        return f"--backends must list names among {BACKENDS}; got {args.backends!r}"
    return sizes, cases, backends


def run(args: argparse.Namespace) -> int:
    options = _options(args)
    if isinstance(options, str):
        print(f"refmask bench: {options}", file=sys.stderr)
        return 2
    sizes, cases, wanted = options
    backends = {name: backend_unavailable(name) for name in wanted}
    env = environment(backends)
    out = sys.stdout
    print(f"refmask bench, {sizes.name} mode: {env['date']}", file=out)
    print(f"machine: {env['machine']}\nversions: {env['versions']}", file=out)
    print("times: median of interleaved repeats, per call; ratio = refmask / reference; targets are goals", file=out)
    started = time.perf_counter()
    rows_of: dict[int, list[Row]] = {case: [] for case in cases}
    seconds_of = dict.fromkeys(cases, 0.0)
    # Backend by backend (all of numpy's cases first, torch's last), not case by case: after a
    # torch op its idle OpenMP threads keep spinning for a while and slow NumPy's multithreaded
    # BLAS, so a NumPy case measured after torch's would measure torch's threads too.
    for backend, why in backends.items():
        print(f"refmask bench: measuring {backend} ...", file=sys.stderr, flush=True)
        for case in cases:
            if case == 4 and backend != wanted[0]:
                continue  # measured once: the oracle in this process, torch in fresh processes of its own
            case_start = time.perf_counter()
            rows_of[case] += CASE_FUNCTIONS[case](sizes, backends if case == 4 else {backend: why})
            seconds_of[case] += time.perf_counter() - case_start
    all_rows: list[Row] = []
    for case in cases:
        print_case(case, rows_of[case], sizes, seconds_of[case], out)
        all_rows += rows_of[case]
    judged = [r for r in all_rows if r.result in ("PASS", "FAIL")]
    failed = [r for r in judged if r.result == "FAIL"]
    print(f"\n{len(judged) - len(failed)} of {len(judged)} targets met; "
          f"{sum(r.result == 'skipped' for r in all_rows)} skipped; {time.perf_counter() - started:.0f} s", file=out)
    if args.markdown or sizes.name == "full":
        print("\n" + markdown(all_rows, env, sizes), file=out)
    return 1 if (args.strict and failed) else 0
