"""The commands in the terminal: `refmask compare` (its progress bar and table) and `refmask show` (a mask
far wider than the terminal) in a pseudo-terminal of 80 columns, where no line they show is wider; and
what `refmask compare` says when a selection matches nothing, the Markdown header of a subset, and
--draw (where one cell differs from the oracle, entry by entry).

A carriage return starts the line again (the progress bar redraws itself so), so lines are counted
between line feeds and carriage returns, as the terminal shows them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from typing import Any

import numpy as np
import pytest

from comparisons.cases import all_cases
from comparisons.matrix import draw
from comparisons.matrix.engine import Progress
from comparisons.matrix.frameworks import missing_reason, nothing_to_compare
from comparisons.matrix.render import FULL_COMMAND, SHORT, render_markdown, render_text
from refmask import oracle
from refmask.cli import main
from refmask.testing import assert_attention_close, assert_weights_close

COLUMNS = 80
_NO_TORCH = missing_reason("torch")
needs_torch = pytest.mark.skipif(_NO_TORCH is not None, reason=_NO_TORCH or "")
_NOTHING_TO_COMPARE = nothing_to_compare()
needs_a_framework = pytest.mark.skipif(_NOTHING_TO_COMPARE is not None, reason=_NOTHING_TO_COMPARE or "")


def _terminal() -> tuple[int, int]:
    """A pseudo-terminal (leader, follower) of COLUMNS x 24."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, COLUMNS, 0, 0))
    return leader, follower


def _read_all(leader: int, into: list[bytes]) -> None:
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: every follower is closed
            return
        if not data:
            return
        into.append(data)


def shown_lines(text: str) -> list[str]:
    return re.split(r"[\r\n]", text)


def test_show_fits_an_80_column_terminal():
    """`python -m refmask show` with stdin, stdout and stderr on the terminal."""
    leader, follower = _terminal()
    env = {**os.environ, "COLUMNS": str(COLUMNS), "LINES": "24"}
    argv = ["show", "causal+padding", "--lengths", "500,120", "--pad-queries"]
    proc = subprocess.Popen([sys.executable, "-m", "refmask", *argv], stdin=follower, stdout=follower,
                            stderr=follower, env=env, close_fds=True)
    os.close(follower)
    chunks: list[bytes] = []
    _read_all(leader, chunks)
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    lines = shown_lines(b"".join(chunks).decode("utf-8"))
    assert any("each character:" in line for line in lines)  # aggregated
    assert any(line.endswith("(no key)") for line in lines)  # batch 1's queries 120..499
    assert max(len(line) for line in lines) <= COLUMNS, max(lines, key=len)


@needs_torch
def test_compare_fits_an_80_column_terminal(monkeypatch):
    """`refmask compare` in this process (torch is imported once per test process, not once more in a
    child), its stdout and stderr on the terminal, read by a thread as it writes."""
    monkeypatch.setenv("COLUMNS", str(COLUMNS))
    leader, follower = _terminal()
    chunks: list[bytes] = []
    reader = threading.Thread(target=_read_all, args=(leader, chunks))
    reader.start()
    argv = ["compare", "--framework", "torch", "--path", "sdpa", "--case", "causal-square", "--progress", "always"]
    with (open(follower, "w", encoding="utf-8", closefd=True) as tty, contextlib.redirect_stdout(tty),
          contextlib.redirect_stderr(tty)):
        code = main(argv)
    reader.join(timeout=60)
    os.close(leader)
    assert code == 0
    lines = shown_lines(b"".join(chunks).decode("utf-8"))
    assert any(re.match(r"^█+ \d+/6 torch\.sdpa", line) for line in lines)  # the progress bar
    assert any(re.match(r"^torch\.sdpa-bool +✓$", line) for line in lines)
    assert max(len(line) for line in lines) <= COLUMNS, max(lines, key=len)


def _result(paths: list[str]) -> dict[str, Any]:
    """A matrix result of every case family for `paths`, with cells of every kind (no framework runs)."""
    cases = all_cases()
    kinds: list[dict[str, Any]] = [
        {"status": "agrees", "policies": ["zero", "uniform", "nan"]},
        {"status": "agrees", "policies": ["uniform"], "alignment": "bottom_right"},
        {"status": "differs", "max_error": "NaN", "reason": "masked NaN scores leak into the output of rows "
                                                          "with kept keys, " * 3},
        {"status": "not expressible", "reason": "cannot pad"},
        {"status": "error", "reason": "RuntimeError: kernel exploded"},
    ]
    cells = [{"path": p, "case": c.id, "policies": [], "alignment": "", "max_error": None, "reason": "",
              **kinds[(i + j) % len(kinds)]} for i, p in enumerate(paths) for j, c in enumerate(cases)]
    return {"date": "2026-01-01 00:00 UTC", "runtime_s": 1.0, "platform": "Python 3.11, x86_64 CPU",
            "versions": {"numpy": "2", "torch": "2"}, "skipped": [{"framework": "xyz", "reason": "not installed"}],
            "cases": [{"id": c.id, "title": c.title, "dtype": c.dtype, "notes": c.notes} for c in cases],
            "paths": [{"id": p, "framework": "torch", "title": p, "convention": ""} for p in paths], "cells": cells}


def test_text_table_fits_80_columns_in_blocks_of_columns():
    paths = ["torch.sdpa-causal_lower_right", "flax.dot_product_attention_weights", "jax.dpa-mask"]
    result = _result(paths)
    text = render_text(result, width=80)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    # Every column once, in order, each block repeating every path's row.
    heads = [line for line in lines if line.startswith("path  ")]
    assert len(heads) > 1
    assert " ".join(h.removeprefix("path") for h in heads).split() == " ".join(
        SHORT[c["id"]] for c in result["cases"]).split()
    for p in paths:
        assert sum(line.startswith(p + " ") for line in lines) == len(heads)
    assert "✗ [1]" in text and "ERR [2]" in text and "✓ uniform, bottom_right" in text
    assert "columns (--case ID): causal = causal-square," in text


def test_progress_bar_fits_the_terminal(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    bar = Progress(304, True)
    for n in range(304):
        bar.step(f"flax.dot_product_attention_weights × float16-fills-upcast {n}")
    bar.close()
    shown = re.split(r"[\r\n]", capsys.readouterr().err)
    assert max(len(s) for s in shown) <= 79
    assert any(s.startswith("█" * 30 + " 304/304 flax.") for s in shown)
    assert shown[-1] == ""


def test_markdown_header_says_how_to_regenerate_only_the_full_matrix():
    result = _result(["torch.sdpa-bool"])
    assert f"Generated by `{FULL_COMMAND}`; do not edit by hand." in render_markdown(result)
    subset = render_markdown(result, "refmask compare --framework torch --format md")
    assert "Generated by" not in subset and "regenerate" not in subset
    assert "A subset of the matrix, made by `refmask compare --framework torch --format md`." in subset


@needs_a_framework
def test_unknown_case_lists_the_cases(capsys):
    assert main(["compare", "--case", "nope", "--progress", "never"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith("refmask compare: no case 'nope'; the cases are: causal-square, causal-rectangular,")


@needs_torch
def test_a_path_that_matches_nothing_lists_the_paths(capsys):
    assert main(["compare", "--framework", "torch", "--path", "zzz", "--progress", "never"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith("refmask compare: no path of torch matched --path 'zzz'; the installed paths of torch "
                           "are: torch.softmax-masked_fill, ")
    assert "torch.sdpa-bool" in line


@needs_torch
def test_markdown_of_a_subset_quotes_its_command(capsys):
    argv = ["compare", "--framework", "torch", "--path", "softmax", "--case", "causal-square", "--format", "md",
            "--progress", "never"]
    assert main(argv) == 0
    md = capsys.readouterr().out
    assert "A subset of the matrix, made by `refmask compare --framework torch --path softmax --case causal-square " \
           "--format md`." in md
    assert "Generated by" not in md


@needs_torch
def test_draw_needs_one_cell(capsys):
    assert main(["compare", "--framework", "torch", "--path", "sdpa", "--case", "causal-square", "--draw"]) == 1
    assert "--draw draws one cell" in capsys.readouterr().err


@needs_torch
def test_draw_marks_where_nan_keys_leak(capsys, monkeypatch):
    """torch.mha-weights on NaN-at-masked (key lengths 4, 1, 6, 3; the padded keys' k is NaN): the NaN
    scores leak into every weight of every row of an item with a padded key, so its grid is "x" on the
    L kept keys and "!" on the masked ones; item 2 (all 6 keys kept) agrees."""
    monkeypatch.setenv("COLUMNS", "80")
    argv = ["compare", "--framework", "torch", "--path", "mha-weights", "--case", "nan-at-masked", "--draw",
            "--progress", "never"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "torch.mha-weights × nan-at-masked: 216 of 288 entries of the weights (query i x key j) beyond" in \
        " ".join(out.split())
    weights = out[out.index("entries of the weights"):out.index("entries of the output")]
    for b, length in ((0, 4), (1, 1), (3, 3)):
        for h in (0, 1):
            grid = weights[weights.index(f"batch {b}, head {h} (36 of 36 beyond; max |native - oracle| NaN):"):]
            rows = [line[8:] for line in grid.splitlines()[3:9]]
            assert rows == [" x" * length + " !" * (6 - length)] * 6
    assert "batch 2" not in weights
    assert "within tolerance in every entry: (batch, head) (2, 0), (2, 1)" in " ".join(weights.split())


@needs_torch
def test_draw_of_an_output_only_path_marks_the_rows_with_no_key(capsys):
    """torch.sdpa-additive-min on float16 fills (key lengths 6, 3, 0, 5): item 2 has no key, and its rows
    give the softmax of the raw scores (the float16 fill cancels out), every entry of them wrong."""
    argv = ["compare", "--framework", "torch", "--path", "sdpa-additive-min", "--case", "float16-fills",
            "--draw", "--progress", "never"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    drawn = out[out.index("entries of the output"):]
    assert re.findall(r"^batch (\d), head (\d)", drawn, re.M) == [("2", "0"), ("2", "1")]
    rows = [line for line in drawn.splitlines() if re.match(r"^(query|i ↓)?\s+\d  [x.]", line)]
    assert len(rows) == 12 and all(line.endswith("  x x x x  (no key)") for line in rows)


def test_entry_tolerances_are_the_assertions():
    """draw's entry maps reject exactly what assert_weights_close / assert_attention_close reject."""
    rng = np.random.default_rng(0)
    keep = np.broadcast_to(oracle.causal_mask(4), (1, 2, 4, 4))
    q, k, v = (rng.standard_normal((1, 2, 4, 3)).astype(np.float32) for _ in range(3))
    out, weights = oracle.attention(q, k, v, keep, return_weights=True)
    assert not draw.weights_beyond(weights, weights, keep).any()
    assert not draw.output_beyond(out, out).any()
    assert_weights_close(weights, weights, mask=keep)

    bad = weights.copy()
    bad[0, 1, 2, 1] = np.nextafter(bad[0, 1, 2, 1], np.float32(2), dtype=np.float32) * np.float32(1 + 1e-5)
    bad[0, 0, 3, 0] = np.nan
    bad[0, 0, 1, 3] = 1e-3  # a masked entry that is not 0
    expected = np.zeros(bad.shape, bool)
    expected[0, 1, 2, 1] = expected[0, 0, 3, 0] = expected[0, 0, 1, 3] = True
    np.testing.assert_array_equal(draw.weights_beyond(bad, weights, keep), expected)
    with pytest.raises(AssertionError):
        assert_weights_close(bad, weights, mask=keep)
    near = weights.copy()
    near[0, 1, 2, 1] = np.nextafter(near[0, 1, 2, 1], np.float32(2), dtype=np.float32)  # 1 ULP: within
    assert not draw.weights_beyond(near, weights, keep).any()
    assert_weights_close(near, weights, mask=keep)

    off = out.copy()
    off[0, 0, 2, 1] += 1e-3
    expected = np.zeros(off.shape, bool)
    expected[0, 0, 2, 1] = True
    np.testing.assert_array_equal(draw.output_beyond(off, out), expected)
    with pytest.raises(AssertionError):
        assert_attention_close(off, out)


@needs_torch
def test_draw_of_a_gradients_cell_marks_where_the_gradients_are_nan(capsys):
    """torch.softmax-additive-inf on the gradients case (query lengths 3, 1, 6, 4 of 6): softmax over an
    all -inf row is NaN, and so is dq on exactly those rows; dk and dv are drawn key by key."""
    argv = ["compare", "--framework", "torch", "--path", "softmax-additive-inf", "--case", "gradients",
            "--draw", "--progress", "never"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    fully_masked = sum(6 - n for n in (3, 1, 6, 4)) * 2 * 4  # rows with no key x heads x dims
    assert f"{fully_masked} of 192 entries of the dq (query i x dim d) beyond tolerance" in " ".join(out.split())
    dq = out[out.index("entries of the dq"):out.index("entries of the dk")]
    grid = dq[dq.index("batch 0, head 0"):].splitlines()[3:9]
    assert [line.endswith("(no key)") for line in grid] == [False] * 3 + [True] * 3
    assert all(line.split()[-6:-2] == ["x"] * 4 for line in grid[3:])
    dk = out[out.index("entries of the dk"):]
    assert "entries of the dk (key j x dim d)" in " ".join(out.split()) and "\nkey   0  " in dk


def test_gradient_entry_tolerance_is_the_assertion():
    """draw's gradient map rejects exactly what assert_gradients_close rejects, relative to the terms."""
    from refmask.testing import assert_gradients_close, attention_gradient_terms

    rng = np.random.default_rng(1)
    keep = np.broadcast_to(oracle.causal_mask(4), (1, 2, 4, 4))
    q, k, v, d_out = (rng.standard_normal((1, 2, 4, 3)).astype(np.float32) for _ in range(4))
    dq = oracle.attention_vjp(q, k, v, keep, d_out).dq
    terms = attention_gradient_terms(q, k, v, keep, d_out).dq
    assert not draw.gradient_beyond(dq, dq, terms).any()
    bad = dq.copy()
    bad[0, 1, 2, 1] += 1e-3 * float(terms[0, 1, 2, 1])
    bad[0, 0, 3, 0] = np.nan
    expected = np.zeros(bad.shape, bool)
    expected[0, 1, 2, 1] = expected[0, 0, 3, 0] = True
    np.testing.assert_array_equal(draw.gradient_beyond(bad, dq, terms), expected)
    with pytest.raises(AssertionError):
        assert_gradients_close(bad, dq, terms=terms)
    assert_gradients_close(dq, dq, terms=terms)
