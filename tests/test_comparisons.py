"""The native conformance matrix: the adapters are right, the matrix equals the committed one, the command runs.

- Each adapter is a worked example of stating refmask's masks in a framework, so each must
  reproduce the oracle on simple cases (causal T=S for all; right padding where expressible).
- The whole matrix, run through `python -m refmask compare --format json`, must equal the
  committed comparisons/expected.json for the pinned framework versions: a framework upgrade that
  changes a behaviour shows up as a failing diff (regenerate the files, review the diff, commit).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from refmask import oracle
from refmask.cli import main
from refmask.comparisons import matrix
from refmask.comparisons._base import NotExpressible
from refmask.comparisons.cases import all_cases
from refmask.testing import assert_attention_close, assert_weights_close

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = ROOT / "comparisons" / "expected.json"
RESULTS = ROOT / "comparisons" / "RESULTS.md"
REGENERATE = (
    "regenerate with `refmask compare --format json --output comparisons/expected.json` and "
    "`refmask compare --format md --output comparisons/RESULTS.md`, review the diff and commit it"
)

PATHS, SKIPPED, VERSIONS = matrix.load_paths()
CASES = {c.id: c for c in all_cases()}


def _check_against_oracle(path, case, policy=None):
    native = path.fn(case)
    q, k, v = native.qkv or (case.q, case.k, case.v)
    out, weights = oracle.attention(q, k, v, case.mask, fully_masked=policy or "zero", return_weights=True)
    assert native.weights is not None or native.output is not None
    if native.weights is not None:
        assert_weights_close(native.weights, weights, mask=case.mask)
    if native.output is not None:
        assert_attention_close(native.output, out)


@pytest.mark.parametrize("path", PATHS, ids=[p.id for p in PATHS])
def test_adapter_reproduces_the_oracle_on_causal(path):
    _check_against_oracle(path, CASES["causal-square"])


@pytest.mark.parametrize("path", PATHS, ids=[p.id for p in PATHS])
def test_adapter_reproduces_the_oracle_on_padding(path):
    try:
        _check_against_oracle(path, CASES["padding-right"])
    except NotExpressible as err:
        assert str(err)  # a path that cannot state padding says why
        assert path.id in {"torch.sdpa-is_causal", "torch.sdpa-causal_upper_left", "torch.sdpa-causal_lower_right",
                           "torch.mha-square-subsequent"}


def test_adapter_states_its_mask_natively():
    """The flex mask_mod and Flax mask builders, built from the structure, equal the oracle's masks."""
    for case in CASES.values():
        if "torch" in VERSIONS:
            import torch
            from torch.nn.attention.flex_attention import create_mask

            from refmask.comparisons.torch_paths import flex_mask_mod

            b, h, t, s = case.shape
            dense = create_mask(flex_mask_mod(case), b, h, t, s, device="cpu")
            assert torch.equal(dense, torch.from_numpy(case.mask.copy()).expand(b, h, t, s)), case.id
        if "flax" in VERSIONS:
            import numpy as np

            from refmask.comparisons.flax_paths import flax_mask

            np.testing.assert_array_equal(np.asarray(flax_mask(case)).astype(bool), case.mask, err_msg=case.id)


def test_mha_fast_path_is_really_the_fast_path(monkeypatch):
    torch = pytest.importorskip("torch")
    from refmask.comparisons import torch_paths

    calls = []
    native = torch._native_multi_head_attention

    def spy(*args, **kwargs):
        calls.append(1)
        return native(*args, **kwargs)

    monkeypatch.setattr(torch, "_native_multi_head_attention", spy)
    torch_paths.mha_fast_path(CASES["causal-square"])
    assert calls, "nn.MultiheadAttention did not take its fast path"


def _comparable(result: dict) -> dict:
    """What must not change between runs: each cell's status, policies, alignment and the kind of
    reason (numbers in reasons, and the max errors, may vary across CPUs and are left out)."""
    return {
        (c["path"], c["case"]): (c["status"], tuple(c["policies"]), c["alignment"],
                                 re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "#", c["reason"]))
        for c in result["cells"]
    }


def _pinned(versions: dict) -> dict:
    return {k: v for k, v in versions.items() if k in matrix.FRAMEWORKS}


def test_matrix_equals_the_committed_expectation():
    """The full `python -m refmask compare --format json` equals comparisons/expected.json."""
    expected = json.loads(EXPECTED.read_text(encoding="utf-8"))
    if _pinned(expected["versions"]) != _pinned(VERSIONS):
        pytest.fail(
            f"framework versions differ from the recorded ones: recorded {_pinned(expected['versions'])}, "
            f"installed {_pinned(VERSIONS)}; {REGENERATE}"
        )
    proc = subprocess.run([sys.executable, "-m", "refmask", "compare", "--format", "json"],
                          capture_output=True, text=True, check=True, cwd=ROOT)
    got = json.loads(proc.stdout)
    assert [c["id"] for c in got["cases"]] == [c["id"] for c in expected["cases"]]
    assert [p["id"] for p in got["paths"]] == [p["id"] for p in expected["paths"]]
    want, have = _comparable(expected), _comparable(got)
    changed = [f"{k[0]} × {k[1]}: expected {want[k]}, got {have.get(k)}" for k in want if have.get(k) != want[k]]
    assert not changed, "the matrix changed:\n" + "\n".join(changed) + f"\n{REGENERATE}"


def test_results_md_renders_expected_json():
    """RESULTS.md and expected.json come from the same matrix (all but the header lines)."""
    expected = json.loads(EXPECTED.read_text(encoding="utf-8"))
    committed = RESULTS.read_text(encoding="utf-8")
    rendered = matrix.render_markdown(expected)
    body = lambda text: text[text.index("## Matrix"):]  # noqa: E731
    assert body(committed) == body(rendered), REGENERATE


def test_committed_matrix_records_the_known_behaviours():
    """The headline facts the docs quote, read from the committed matrix."""
    cells = {(c["path"], c["case"]): c for c in json.loads(EXPECTED.read_text(encoding="utf-8"))["cells"]}
    policy = lambda path, case: cells[(path, case)]["policies"]  # noqa: E731
    if "torch" in VERSIONS:
        assert policy("torch.softmax-masked_fill", "fully-masked-row") == ["nan"]
        assert policy("torch.mha-weights", "fully-masked-row") == ["nan"]
        assert policy("torch.sdpa-bool", "fully-masked-row") == ["zero"]
        assert policy("torch.flex_attention", "fully-masked-row") == ["zero"]
        assert cells[("torch.sdpa-is_causal", "causal-rectangular")]["alignment"] == "top_left"
        assert cells[("torch.sdpa-causal_lower_right", "causal-rectangular")]["alignment"] == "bottom_right"
    if "flax" in VERSIONS:
        assert policy("flax.dot_product_attention_weights", "fully-masked-row") == ["uniform"]
    if "jax" in VERSIONS:
        assert policy("jax.softmax-where", "fully-masked-row") == ["zero"]
        assert policy("jax.dpa-mask", "fully-masked-batch") == ["uniform"]


def test_compare_in_process_subset(tmp_path, capsys):
    out = tmp_path / "m.json"
    argv = ["compare", "--case", "causal-square", "--case", "fully-masked-row", "--path", "sdpa-bool",
            "--path", "softmax", "--format", "json", "--output", str(out), "--progress", "always"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    result = json.loads(out.read_text(encoding="utf-8"))
    assert {c["case"] for c in result["cells"]} <= {"causal-square", "fully-masked-row"}
    assert all(c["status"] == "agrees" for c in result["cells"])
    if result["cells"]:
        assert "█" in err  # the progress bar


def test_compare_text_and_markdown(capsys):
    assert main(["compare", "--case", "causal-square", "--path", "softmax", "--progress", "never"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("refmask compare: numpy ")
    argv = ["compare", "--case", "causal-square", "--path", "softmax", "--format", "md", "--progress", "never"]
    assert main(argv) == 0
    md = capsys.readouterr().out
    assert md.startswith("# Native paths against the refmask oracle") and "| path |" in md


def test_missing_framework_is_skipped_not_an_error(monkeypatch):
    monkeypatch.setitem(matrix.FRAMEWORKS, "nosuchframework", (("nosuchframework_xyz",), "nosuch_paths"))
    paths, skipped, _ = matrix.load_paths(["nosuchframework"])
    assert paths == []
    assert skipped == [{"framework": "nosuchframework", "reason": "nosuchframework_xyz not installed"}]


def test_not_expressible_and_errors_are_cells_not_crashes():
    from refmask.comparisons._base import Path as NativePath

    def boom(case):
        raise RuntimeError("kernel exploded\nsecond line")

    def cannot(case):
        raise NotExpressible("no way to say it")

    case = CASES["causal-square"]
    err = matrix.evaluate(NativePath("x.boom", "x", "boom", boom, ""), case)
    assert err.status == "error" and err.reason == "RuntimeError: kernel exploded"
    na = matrix.evaluate(NativePath("x.na", "x", "na", cannot, ""), case)
    assert na.status == "not expressible" and na.text() == "–"
