"""The user's-eye examples in examples/ run, as a user would run them, with pytest.

examples/ is outside the configured testpaths (["tests"]), so a plain `pytest` collects these
only here, once.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest

pytest_plugins = ["pytester"]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_examples_are_outside_testpaths():
    import tomllib

    config = tomllib.loads((EXAMPLES.parent / "pyproject.toml").read_text())
    assert "examples" not in config["tool"]["pytest"]["ini_options"]["testpaths"]


def test_user_kernel_examples_pass(pytester):
    test_files = sorted(EXAMPLES.glob("test_*.py"))
    assert test_files, f"no example tests in {EXAMPLES}"
    result = pytester.runpytest(str(EXAMPLES), "-p", "no:cacheprovider", "-q")
    n_tests = sum(f.read_text().count("\ndef test_") for f in test_files)
    result.assert_outcomes(passed=n_tests)


DOC = EXAMPLES.parent / "docs" / "testing.md"
# Each block padded with the lines before it, so that its line numbers are the page's (tracebacks, and
# hypothesis, which reads a test's source by them).
DOC_BLOCKS = ["\n" * DOC.read_text().count("\n", 0, m.start(1)) + m.group(1)
              for m in re.finditer(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)]


def test_testing_doc_has_python_blocks():
    assert len(DOC_BLOCKS) >= 4


@pytest.mark.parametrize("source", DOC_BLOCKS, ids=[f"block{i}" for i in range(len(DOC_BLOCKS))])
def test_testing_doc_block_runs(source, monkeypatch):
    # `from my_attention import attention` in the doc is the example kernel of examples/.
    monkeypatch.syspath_prepend(str(EXAMPLES))
    namespace: dict = {}
    exec(compile(source, str(DOC), "exec"), namespace)
    for name, fn in list(namespace.items()):
        if name.startswith("test_") and callable(fn):
            params = inspect.signature(fn).parameters
            fn(**({"attention_backend": "numpy"} if "attention_backend" in params else {}))


# ---------------------------------------------------------------------------------------------
# examples/flash_attention.py against plain float64 formulas


@pytest.fixture
def flash(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import flash_attention

    return flash_attention


def _attention_formulas(q, k, v, keep, g):
    """out, lse, dq, dk, dv in float64, written out: s = q k^T / sqrt(D), w = softmax over kept keys
    (0 in a row with none), lse = log sum_j exp(s_j), dv = w^T g, ds = w * (g v^T - rowsum(g * out)),
    dq = ds k / sqrt(D), dk = ds^T q / sqrt(D)."""
    c = 1 / np.sqrt(q.shape[-1])
    s = np.where(keep, c * q @ np.swapaxes(k, -1, -2), -np.inf)
    lse = np.logaddexp.reduce(s, axis=-1)
    w = np.where(keep, np.exp(s - np.where(np.isfinite(lse), lse, 0)[..., None]), 0.0)
    out = w @ v
    ds = w * (g @ np.swapaxes(v, -1, -2) - (g * out).sum(axis=-1, keepdims=True))
    return out, lse, c * ds @ k, c * np.swapaxes(ds, -1, -2) @ q, np.swapaxes(w, -1, -2) @ g


@pytest.mark.parametrize("s_len", [1, 4, 9])  # one block, exactly one, several with a partial last one
def test_flash_kernel_and_backward_match_the_formulas(flash, s_len):
    rng = np.random.default_rng(s_len)
    q, k, v, g = (rng.standard_normal(shape) for shape in [(2, 2, 5, 8), (2, 2, s_len, 8), (2, 2, s_len, 3),
                                                           (2, 2, 5, 3)])
    keep = rng.random((2, 1, 5, s_len)) < 0.6
    keep[0, 0, 1] = False  # a row with no kept key
    keep[1, 0, 2] = True
    out, lse, dq, dk, dv = _attention_formulas(q, k, v, np.broadcast_to(keep, (2, 2, 5, s_len)), g)
    got_out, got_lse = flash.flash_attention(q, k, v, keep)
    np.testing.assert_allclose(got_out, out, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(got_lse, lse, rtol=1e-12, atol=1e-13)
    assert np.isneginf(got_lse[0, :, 1]).all() and (got_out[0, :, 1] == 0).all()
    got = flash.flash_attention_backward(q, k, v, keep, got_out, got_lse, g)
    for got_grad, want in zip(got, (dq, dk, dv), strict=True):
        np.testing.assert_allclose(got_grad, want, rtol=1e-11, atol=1e-12)


def test_flash_kernel_sums_grouped_query_heads(flash):
    rng = np.random.default_rng(1)
    q, k, v, g = (rng.standard_normal(shape) for shape in [(1, 4, 3, 2), (1, 2, 6, 2), (1, 2, 6, 2), (1, 4, 3, 2)])
    keep = np.ones((1, 1, 3, 6), bool)
    out, lse, dq, dk, dv = _attention_formulas(q, np.repeat(k, 2, axis=1), np.repeat(v, 2, axis=1), keep, g)
    got_out, got_lse = flash.flash_attention(q, k, v, keep)
    np.testing.assert_allclose(got_out, out, rtol=1e-12)
    np.testing.assert_allclose(got_lse, lse, rtol=1e-12)
    got = flash.flash_attention_backward(q, k, v, keep, got_out, got_lse, g)
    np.testing.assert_allclose(got[0], dq, rtol=1e-11, atol=1e-12)
    for got_grad, want in zip(got[1:], (dk, dv), strict=True):  # each key/value head sums its two query heads
        np.testing.assert_allclose(got_grad, want.reshape(1, 2, 2, 6, 2).sum(axis=2), rtol=1e-11, atol=1e-12)


def test_flash_bugs_differ_from_the_kernel_only_on_empty_rows(flash):
    rng = np.random.default_rng(2)
    q, k, v, g = (rng.standard_normal((1, 1, 4, 2)) for _ in range(4))
    keep = np.tril(np.ones((4, 4), bool))
    keep[2] = False
    out, lse = flash.flash_attention(q, k, v, keep)
    bad_out, bad_lse = flash.flash_attention_lse_inf(q, k, v, keep)
    assert (bad_out == out).all() and bad_lse[0, 0, 2] == np.inf
    assert (np.delete(bad_lse, 2, axis=-1) == np.delete(lse, 2, axis=-1)).all()
    good = flash.flash_attention_backward(q, k, v, keep, out, lse, g)
    bad = flash.flash_attention_backward_nan_dv(q, k, v, keep, out, lse, g)
    assert (bad[0] == good[0]).all() and (bad[1] == good[1]).all()
    assert np.isnan(bad[2]).all() and not np.isnan(good[2]).any()


# ---------------------------------------------------------------------------------------------
# docs/testing.md's sample reports are what the code prints


def _failure(fn, **kwargs) -> str:
    from refmask.testing import check_attention

    with pytest.raises(AssertionError) as caught:
        check_attention(fn, **kwargs)
    return str(caught.value)


def _float32_hint_report() -> str:
    import refmask
    from refmask.testing import assert_attention_close

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 2, 4, 8)) for _ in range(3))
    mask = refmask.causal_mask(4)
    q32, k32, v32 = (x.astype(np.float32) for x in (q, k, v))
    in_float32 = refmask.attention(q32, k32, v32, mask).astype(np.float64)
    with pytest.raises(AssertionError) as caught:
        assert_attention_close(in_float32, refmask.attention(q, k, v, mask), mask=mask)
    return str(caught.value)


def _reports():
    """What each sample report of docs/testing.md is, by its first line: the code that prints it."""
    import flash_attention as flash
    import my_attention as mine

    from refmask.testing import check_attention

    return {
        "check_attention: 80 catalogue cases and 50 generated examples agree\n  float64: output 0 eps":
            lambda: str(check_attention(mine.attention)),
        "check_attention: 80 catalogue cases and 50 generated examples agree\n  float64: output 1 eps":
            lambda: str(check_attention(flash.flash_attention, lse=True, grads=True,
                                        backward_fn=flash.flash_attention_grads)),
        "check_attention: `attention_mask_after_softmax`": lambda: _failure(mine.attention_mask_after_softmax),
        "check_attention: `attention_fill_minus_1e9`":
            lambda: _failure(mine.attention_fill_minus_1e9, fully_masked="uniform", dtypes=["float16"]),
        "check_attention: `flash_attention_grads_nan_dv`":
            lambda: _failure(flash.flash_attention, lse=True, grads=True,
                             backward_fn=flash.flash_attention_grads_nan_dv),
        "check_attention: `flash_attention_lse_inf`": lambda: _failure(flash.flash_attention_lse_inf, lse=True),
        "output: 64 of 64 entries differ": _float32_hint_report,
    }


def _as_pattern(shown: str) -> str:
    """A sample as a regular expression: a line "..." stands for any lines, a line ending in ", ..." for
    any ending. In a passing report's dtype lines ("  float32: output 1.5 eps*max|v|, ...") each worst
    error stands for any number: it is a rounding error that depends on the machine's BLAS kernels
    (the matmuls of a float64 kernel round differently with AVX-512 and without)."""
    parts = []
    passing = shown.startswith("check_attention: ") and " agree\n" in shown
    for line in shown.splitlines():
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        elif line.endswith(", ..."):
            parts.append(re.escape(line[:-3]) + r"[^\n]*\n")
        elif passing and re.match(r"  \w+: ", line):
            figures = re.split(r"[0-9][0-9.e+-]*(?= eps)", line)
            parts.append(r"[0-9][0-9.e+-]*".join(re.escape(p) for p in figures) + r"\n")
        else:
            parts.append(re.escape(line) + r"\n")
    return "".join(parts)


def _text_blocks(text: str) -> list[str]:
    """The ```text blocks of a page, each without the indentation of its fence (inside a list)."""
    blocks = []
    for indent, body in re.findall(r"(?m)^( *)```text\n(.*?)^ *```$", text, flags=re.S):
        blocks.append("".join(line[len(indent):] + "\n" for line in body.splitlines()))
    return blocks


REPORT_BLOCKS = [b for b in _text_blocks(DOC.read_text())
                 if b.startswith(("check_attention: ", "output: ", "weights: ", "lse: "))]


def test_testing_doc_has_sample_reports():
    assert len(REPORT_BLOCKS) >= 7


@pytest.mark.parametrize("shown", REPORT_BLOCKS, ids=[b.splitlines()[0][:60] for b in REPORT_BLOCKS])
def test_testing_doc_sample_report_is_what_the_code_prints(shown, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    producers = [make for first, make in _reports().items() if shown.startswith(first)]
    assert len(producers) == 1, f"no code in _reports() prints the sample starting {shown.splitlines()[:2]}"
    actual = producers[0]() + "\n"
    assert re.fullmatch(_as_pattern(shown), actual), f"docs/testing.md shows:\n{shown}\nthe code prints:\n{actual}"
