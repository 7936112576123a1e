"""The native conformance matrix: the adapters are right, the matrix equals the committed one, the command runs.

- Each adapter is a worked example of stating refmask's masks in a framework, so each must
  reproduce the oracle on simple cases (causal T=S for all; right padding where expressible).
- The whole matrix, one framework per test (as `refmask compare --framework NAME` runs it), must
  equal the committed comparisons/expected.json for the pinned framework versions: a framework
  upgrade that changes a behaviour shows up as a failing diff (regenerate the files, review the
  diff, commit). With other versions installed that framework's test is skipped, naming both.
- Nothing here imports a framework at collection: a test that needs one is skipped, with the
  install hint, where it is not installed.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from comparisons._base import NotExpressible
from comparisons._base import Path as NativePath
from comparisons.cases import Case, all_cases
from comparisons.matrix.engine import run_matrix
from comparisons.matrix.evaluate import evaluate
from comparisons.matrix.frameworks import FRAMEWORKS, Framework, load_paths, missing_reason
from comparisons.matrix.readme import readme_block
from comparisons.matrix.render import render_markdown
from harness.environments import numpy_only_python
from refmask import oracle
from refmask._backends import missing_dependency
from refmask.cli import main
from refmask.testing import assert_attention_close, assert_weights_close

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = ROOT / "comparisons" / "expected.json"
RESULTS = ROOT / "comparisons" / "RESULTS.md"
REGENERATE = (
    "regenerate with `refmask compare --format json --output comparisons/expected.json` and "
    "`refmask compare --format md --output comparisons/RESULTS.md`, review the diff and commit it"
)

COMMITTED = json.loads(EXPECTED.read_text(encoding="utf-8"))
# The committed matrix's rows: the adapters' tests are parametrized by them, so collecting this
# module imports no framework.
COMMITTED_PATHS = [pytest.param(p["id"], p["framework"], id=p["id"]) for p in COMMITTED["paths"]]


def needs(framework: str) -> None:
    """Skip the test, with the install hint, unless `framework`'s adapters can run here."""
    why = missing_reason(framework)
    if why is not None:
        pytest.skip(why)


@functools.cache
def _loaded(framework: str) -> tuple[dict[str, NativePath], str]:
    """One framework's paths and version (only its adapters are imported)."""
    paths, _, versions = load_paths([framework])
    return {p.id: p for p in paths}, versions[framework]


@functools.cache
def _all_cases() -> dict[str, Case]:
    return {c.id: c for c in all_cases()}


def cases() -> dict[str, Case]:
    """The case families by id; the test is skipped, with the install hint, where the bfloat16
    case cannot be built."""
    why = missing_dependency("ml_dtypes", "test", "the bfloat16 case")
    if why is not None:
        pytest.skip(why)
    return _all_cases()


def case(case_id: str) -> Case:
    return cases()[case_id]


def native_path(path_id: str, framework: str) -> NativePath:
    needs(framework)
    paths, _ = _loaded(framework)
    assert path_id in paths, f"{path_id} is in comparisons/expected.json but no adapter defines it; {REGENERATE}"
    return paths[path_id]


def _check_against_oracle(path, case, policy=None):
    native = path.fn(case)
    q, k, v = native.qkv or (case.q, case.k, case.v)
    out, weights = oracle.attention(q, k, v, case.mask, fully_masked=policy or "zero", return_weights=True)
    assert native.weights is not None or native.output is not None
    if native.weights is not None:
        assert_weights_close(native.weights, weights, mask=case.mask)
    if native.output is not None:
        assert_attention_close(native.output, out)


@pytest.mark.parametrize("path_id, framework", COMMITTED_PATHS)
def test_adapter_reproduces_the_oracle_on_causal(path_id, framework):
    _check_against_oracle(native_path(path_id, framework), case("causal-square"))


@pytest.mark.parametrize("path_id, framework", COMMITTED_PATHS)
def test_adapter_reproduces_the_oracle_on_padding(path_id, framework):
    path = native_path(path_id, framework)
    try:
        _check_against_oracle(path, case("padding-right"))
    except NotExpressible as err:
        assert str(err)  # a path that cannot state padding says why, as the committed matrix records
        committed = {(c["path"], c["case"]): c["status"] for c in COMMITTED["cells"]}
        assert committed[(path.id, "padding-right")] == "not expressible"


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_every_adapter_is_in_the_committed_matrix(framework):
    """No adapter escapes the parametrized tests above: a framework's loaded paths are its committed rows."""
    needs(framework)
    paths, _ = _loaded(framework)
    assert list(paths) == [p["id"] for p in COMMITTED["paths"] if p["framework"] == framework], REGENERATE


def test_flex_mask_mod_states_the_mask():
    """The flex mask_mod, built from the structure, equals the oracle's mask on every case."""
    needs("torch")
    import torch
    from torch.nn.attention.flex_attention import create_mask

    from comparisons.torch_paths import flex_mask_mod

    for c in cases().values():
        b, h, t, s = c.shape
        dense = create_mask(flex_mask_mod(c), b, h, t, s, device="cpu")
        assert torch.equal(dense, torch.from_numpy(c.mask.copy()).expand(b, h, t, s)), c.id


def test_flax_mask_states_the_mask():
    """Flax's mask builders, from the structure, equal the oracle's mask on every case."""
    needs("flax")
    from comparisons.flax_paths import flax_mask

    for c in cases().values():
        np.testing.assert_array_equal(np.asarray(flax_mask(c)).astype(bool), c.mask, err_msg=c.id)


def test_mha_fast_path_is_really_the_fast_path(monkeypatch):
    needs("torch")
    import torch

    from comparisons import torch_paths

    calls = []
    native = torch._native_multi_head_attention

    def spy(*args, **kwargs):
        calls.append(1)
        return native(*args, **kwargs)

    monkeypatch.setattr(torch, "_native_multi_head_attention", spy)
    torch_paths.mha_fast_path(case("causal-square"))
    assert calls, "nn.MultiheadAttention did not take its fast path"


def _comparable(result: dict) -> dict:
    """What must not change between runs: each cell's status, policies, alignment and the kind of
    reason (numbers in reasons, and the max errors, may vary across CPUs and are left out)."""
    return {
        (c["path"], c["case"]): (c["status"], tuple(c["policies"]), c["alignment"],
                                 re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "#", c["reason"]))
        for c in result["cells"]
    }


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_matrix_equals_the_committed_expectation(framework):
    """A framework's rows of the matrix (run_matrix, as `refmask compare --framework NAME` runs it) equal
    its rows of comparisons/expected.json; one test per framework, so they run in parallel."""
    needs(framework)
    _, version = _loaded(framework)
    recorded = COMMITTED["versions"].get(framework)
    if recorded != version:
        pytest.skip(f"the matrix was recorded with {framework} {recorded}, installed here is {version}: install "
                    f"constraints.txt's pins to check it, or {REGENERATE}")
    got = run_matrix([framework])
    assert [c["id"] for c in got["cases"]] == [c["id"] for c in COMMITTED["cases"]]
    committed_rows = {p["id"] for p in COMMITTED["paths"] if p["framework"] == framework}
    want = {key: value for key, value in _comparable(COMMITTED).items() if key[0] in committed_rows}
    have = _comparable(got)
    changed = [f"{k[0]} × {k[1]}: expected {want.get(k)}, got {have.get(k)}"
               for k in want.keys() | have.keys() if have.get(k) != want.get(k)]
    assert not changed, "the matrix changed:\n" + "\n".join(sorted(changed)) + f"\n{REGENERATE}"


def test_compare_command_prints_the_matrix_as_json():
    """`python -m refmask compare --format json` (one small framework, so it stays cheap) is the engine's
    result: the same cells as run_matrix."""
    needs("jax")
    argv = ["compare", "--framework", "jax", "--case", "causal-square", "--case", "fully-masked-batch",
            "--format", "json"]
    proc = subprocess.run([sys.executable, "-m", "refmask", *argv], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    expected = run_matrix(["jax"], cases_filter=["causal-square", "fully-masked-batch"])
    assert _comparable(got) == _comparable(expected)


def test_results_md_renders_expected_json():
    """RESULTS.md and expected.json come from the same matrix (all but the header lines)."""
    committed = RESULTS.read_text(encoding="utf-8")
    rendered = render_markdown(COMMITTED)
    body = lambda text: text[text.index("## Matrix"):]  # noqa: E731
    assert body(committed) == body(rendered), REGENERATE


def test_readme_convention_table_is_generated_from_the_matrix():
    """README.md's convention table is comparisons/expected.json's, one row per path (no row by hand)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme_block(COMMITTED) in readme, (
        "README.md's convention table is not the committed matrix's: run `python -m comparisons.matrix.readme`")


def test_committed_matrix_records_the_known_behaviours():
    """The headline facts the docs quote, read from the committed matrix."""
    cells = {(c["path"], c["case"]): c for c in COMMITTED["cells"]}
    policy = lambda path, case: cells[(path, case)]["policies"]  # noqa: E731
    assert policy("torch.softmax-masked_fill", "fully-masked-row") == ["nan"]
    assert policy("torch.mha-weights", "fully-masked-row") == ["nan"]
    assert policy("torch.sdpa-bool", "fully-masked-row") == ["zero"]
    assert policy("torch.flex_attention", "fully-masked-row") == ["zero"]
    assert cells[("torch.sdpa-is_causal", "causal-rectangular")]["alignment"] == "top_left"
    assert cells[("torch.sdpa-causal_lower_right", "causal-rectangular")]["alignment"] == "bottom_right"
    assert policy("flax.dot_product_attention_weights", "fully-masked-row") == ["uniform"]
    assert policy("jax.softmax-where", "fully-masked-row") == ["zero"]
    assert policy("jax.dpa-mask", "fully-masked-batch") == ["uniform"]
    assert "2^(-8 (h + 1) / H) for every H" in cells[("attn_gym.mask_mods", "alibi")]["reason"]
    assert cells[("hf.masks-sdpa", "prefix-lm")]["status"] == "agrees"


def test_compare_in_process_subset(tmp_path, capsys):
    needs("torch")
    out = tmp_path / "m.json"
    argv = ["compare", "--framework", "torch", "--case", "causal-square", "--case", "fully-masked-row",
            "--path", "sdpa-bool", "--path", "softmax-masked_fill", "--format", "json", "--output", str(out),
            "--progress", "always"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    result = json.loads(out.read_text(encoding="utf-8"))
    assert {(c["path"], c["case"]) for c in result["cells"]} == {
        (p, c) for p in ("torch.sdpa-bool", "torch.softmax-masked_fill") for c in ("causal-square", "fully-masked-row")
    }
    assert all(c["status"] == "agrees" for c in result["cells"])
    assert "█" in err  # the progress bar


def test_compare_text_and_markdown(capsys):
    needs("torch")
    argv = ["compare", "--framework", "torch", "--case", "causal-square", "--path", "softmax", "--progress", "never"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert text.startswith("refmask compare: numpy ")
    assert re.search(r"^torch\.softmax-masked_fill +✓$", text, re.M), text
    assert main([*argv, "--format", "md"]) == 0
    md = capsys.readouterr().out
    assert md.startswith("# Native paths against the refmask oracle")
    assert "| `torch.softmax-masked_fill` | ✓ |" in md


def test_missing_framework_is_skipped_not_an_error(monkeypatch):
    monkeypatch.setitem(FRAMEWORKS, "nosuchframework",
                        Framework(("nosuchframework_xyz",), "nosuchextra", "comparisons.nosuch_paths"))
    paths, skipped, _ = load_paths(["nosuchframework"])
    assert paths == []
    [entry] = skipped
    assert entry["framework"] == "nosuchframework"
    assert "nosuchframework_xyz" in entry["reason"] and 'pip install "refmask[nosuchextra]"' in entry["reason"]


def test_compare_with_no_framework_says_what_to_install(monkeypatch, capsys):
    for name in list(FRAMEWORKS):
        monkeypatch.setitem(FRAMEWORKS, name, Framework((f"{name}_not_installed_xyz",), name, "unused"))
    assert main(["compare", "--progress", "never"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith("refmask compare: no framework to compare")
    extras = ",".join(FRAMEWORKS)  # each stand-in framework is its own extra here
    assert f'pip install "refmask[{extras}]"' in line and f'pip install -e ".[{extras}]"' in line


def test_compare_on_a_numpy_only_install_is_one_line(tmp_path):
    command, env = numpy_only_python(tmp_path)
    proc = subprocess.run([*command, "compare"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    [line] = proc.stderr.splitlines()
    assert line.startswith("refmask compare: no framework to compare"), line
    extras = ",".join(dict.fromkeys(f.extra for f in FRAMEWORKS.values()))  # torch,jax,compare
    assert f'pip install "refmask[{extras}]"' in line and f'pip install -e ".[{extras}]"' in line


def test_not_expressible_and_errors_are_cells_not_crashes():
    def boom(case):
        raise RuntimeError("kernel exploded\nsecond line")

    def cannot(case):
        raise NotExpressible("no way to say it")

    causal = case("causal-square")
    err = evaluate(NativePath("x.boom", "x", "boom", boom, ""), causal)
    assert err.status == "error" and err.reason == "RuntimeError: kernel exploded"
    na = evaluate(NativePath("x.na", "x", "na", cannot, ""), causal)
    assert na.status == "not expressible" and na.text() == "–"


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_a_path_without_gradients_says_why_in_the_gradient_cell(framework):
    """The gradients column of a path that takes none is "not expressible", with the path's own reason."""
    needs(framework)
    paths, _ = _loaded(framework)
    for path in paths.values():
        if "grad" not in path.features:
            assert path.no_grads, f"{path.id} takes no gradients and does not say why (Path.no_grads)"
            cell = evaluate(path, case("gradients"))
            assert (cell.status, cell.reason) == ("not expressible", f"no gradients ({path.no_grads})"), path.id


def test_a_path_that_adds_another_bias_is_told_which():
    """A path on the ALiBi case that drops the bias, or adds the power-of-two slopes for H = 3, differs
    with a reason naming that reading; one that adds refmask.alibi_bias agrees."""
    from comparisons._base import Native

    alibi = case("alibi")

    def adds(bias):
        def fn(c):
            return Native(output=np.asarray(oracle.attention(c.q, c.k, c.v, c.mask, bias=bias)))
        return fn

    right = evaluate(NativePath("x.alibi", "x", "alibi", adds(alibi.bias), "", frozenset({"bias"})), alibi)
    assert right.status == "agrees"
    dropped = evaluate(NativePath("x.none", "x", "none", adds(None), "", frozenset({"bias"})), alibi)
    assert (dropped.status, dropped.reason) == ("differs", "the score bias it adds is none (the bias is dropped)")
    slopes = np.exp2(-8.0 * np.arange(1, 4) / 3)
    power_of_two = (slopes[:, None, None] * (np.arange(6)[None, :] - np.arange(6)[:, None])).astype(np.float32)
    misread = evaluate(NativePath("x.p2", "x", "p2", adds(power_of_two), "", frozenset({"bias"})), alibi)
    assert misread.status == "differs" and "2^(-8 (h + 1) / H) for every H" in misread.reason
    lacking = evaluate(NativePath("x.no", "x", "no", adds(alibi.bias), ""), alibi)
    assert (lacking.status, lacking.reason) == ("not expressible", "no score bias")
