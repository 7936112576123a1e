"""`refmask bench` runs every case and reports a row for each: it never judges the times."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
from pathlib import Path

import pytest

from comparisons.bench.cases import CASES
from comparisons.bench.timing import interleaved
from harness.environments import numpy_only_python
from refmask import cli
from refmask._backends import BACKENDS

ROOT = Path(__file__).resolve().parents[1]


def run_bench(*argv: str) -> tuple[int, str]:
    """`refmask bench *argv` in this process: (exit code, stdout)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = cli.main(["bench", *argv])
    return code, buffer.getvalue()


@pytest.fixture(scope="module")
def smoke_output():
    """One `refmask bench --smoke` run, shared by the tests of this module."""
    return run_bench("--smoke")


def test_smoke_run_exits_0(smoke_output):
    code, out = smoke_output
    assert code == 0, out


@pytest.mark.parametrize("case", CASES)
def test_every_case_prints_its_rows(smoke_output, case):
    _, out = smoke_output
    section = re.search(rf"^case {case}: (.*?)(?=^case \d|\Z)", out, re.S | re.M)
    assert section, f"no section for case {case}:\n{out}"
    rows = [line for line in section.group(1).splitlines()[2:] if line.strip()]
    assert rows, f"case {case} printed no rows:\n{section.group(0)}"
    # numpy (the oracle) is always installed: it is measured, not skipped, in every case.
    measured = [r for r in rows if r.split()[0] == "numpy" and re.search(r"\b(PASS|FAIL|info)\b", r)]
    assert measured, f"case {case} has no measured numpy row:\n{section.group(0)}"


def test_every_backend_is_measured_or_skipped_with_a_reason(smoke_output):
    _, out = smoke_output
    for case in (1, 2, 3, 5):
        section = re.search(rf"^case {case}: (.*?)(?=^case \d|\Z)", out, re.S | re.M)
        assert section, f"no section for case {case}:\n{out}"
        for backend in BACKENDS:
            assert re.search(rf"^  {backend} ", section.group(1), re.M), f"case {case}: no row for {backend}"
    # case 4 measures the oracle and torch's peak against SDPA's (jax has no row there): both in one run
    section = re.search(r"^case 4: (.*?)(?=^case \d|\Z)", out, re.S | re.M)
    assert section, f"no section for case 4:\n{out}"
    for backend in ("numpy", "torch"):
        assert re.search(rf"^  {backend} ", section.group(1), re.M), f"case 4: no row for {backend}"


def test_smoke_mode_says_its_shapes_are_smaller(smoke_output):
    _, out = smoke_output
    assert "[smoke mode: smaller than full mode's (8, 8, 512, 512)]" in out


def test_cases_and_markdown_options():
    code, out = run_bench("--smoke", "--cases", "4", "--backends", "numpy", "--markdown")
    assert code == 0, out
    assert "case 4:" in out and "case 1:" not in out
    assert "| case | backend |" in out


def test_bad_case_number_is_a_usage_error(capsys):
    assert run_bench("--smoke", "--cases", "9")[0] == 2
    assert "--cases" in capsys.readouterr().err


def test_on_a_numpy_only_install_missing_backends_are_skipped_with_their_extra(tmp_path):
    command, env = numpy_only_python(tmp_path)
    argv = [*command, "bench", "--smoke", "--cases", "5", "--backends", "numpy,jax,torch"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^  numpy .* PASS ", proc.stdout, re.M), proc.stdout
    for backend in ("jax", "torch"):
        row = re.search(rf"^  {backend} .*skipped.*$", proc.stdout, re.M)
        assert row, proc.stdout
        assert f'pip install "refmask[{backend}]"' in row.group(0)
        assert f'pip install -e ".[{backend}]"' in row.group(0)


def test_a_call_that_raises_is_reported_not_raised():
    times = interleaved({"broken": lambda: 1 / 0, "fine": lambda: None}, repeats=2)
    broken = times["broken"]
    assert isinstance(broken, str) and broken.startswith("ZeroDivisionError")
    assert isinstance(times["fine"], float)
