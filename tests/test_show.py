"""`refmask show`: every mask kind in the terminal, hand-drawn grids for a few, and a PNG smoke test."""

from __future__ import annotations

import re

import numpy as np
import pytest

from refmask import oracle, show
from refmask._backends import missing_dependency
from refmask.cli import main

_NO_MATPLOTLIB = missing_dependency("matplotlib", "plot", "refmask show --png")
needs_matplotlib = pytest.mark.skipif(_NO_MATPLOTLIB is not None, reason=_NO_MATPLOTLIB or "")


def _show(capsys, *argv: str) -> str:
    assert main(["show", *argv]) == 0
    return capsys.readouterr().out


def _grids(text: str) -> list[list[str]]:
    """The cell part of each grid row in `show`'s output (a grid starts at its "query 0" row)."""
    grids: list[list[str]] = []
    for line in text.splitlines():
        row = re.match(r"^(?:query|i ↓|i v)?\s*(\d+) (\D*)$", line)
        if row is None:
            continue
        if line.startswith("query"):
            grids.append([])
        grids[-1].append(row.group(2).removesuffix("  (no key)"))
    return grids


CAUSAL_4x6_BOTTOM_RIGHT = """\
causal align=bottom_right; T=4 queries, S=6 keys

        key j →
         0 1 2 3 4 5
query 0 ██████ · · ·
i ↓   1 ████████ · ·
      2 ██████████ ·
      3 ████████████

██ query i may attend to key j   · masked
"""


def test_causal_bottom_right_hand_drawn(capsys):
    assert _show(capsys, "causal", "--q-len", "4", "--kv-len", "6", "--align", "bottom_right") == \
        CAUSAL_4x6_BOTTOM_RIGHT


def test_padding_ascii_hand_drawn(capsys):
    out = _show(capsys, "padding", "--lengths", "2,3", "--max-len", "3", "--q-len", "2", "--ascii")
    assert out == """\
padding lengths=[2, 3] side=right; T=2 queries, S=3 keys

batch 0:
        key j ->
         0 1 2
query 0 #### .
i v   1 #### .

batch 1:
        key j ->
         0 1 2
query 0 ######
i v   1 ######

## query i may attend to key j   . masked
"""


def test_fully_masked_rows_are_labelled(capsys):
    out = _show(capsys, "causal", "--q-len", "3", "--kv-len", "2", "--align", "bottom_right")
    assert out.splitlines()[4].endswith("(no key)")
    assert "(no key)" not in out.splitlines()[5]


def test_tens_row_for_long_key_axes(capsys):
    out = _show(capsys, "sliding_window", "--q-len", "12", "--window", "3,0")
    lines = out.splitlines()
    assert lines[3].rstrip().endswith("1 1")  # tens of keys 10 and 11
    assert lines[4].rstrip().endswith("8 9 0 1")


# Every kind, each checked cell by cell against the oracle's mask.
KIND_ARGS = [
    (["causal", "--q-len", "8", "--kv-len", "12", "--align", "bottom_right"],
     oracle.causal_mask(8, 12, align="bottom_right")),
    (["sliding_window", "--q-len", "16", "--window", "3,0"], oracle.sliding_window_mask(16, window=(3, 0))),
    (["sliding_window", "--q-len", "6", "--window", "1"], oracle.sliding_window_mask(6, window=1)),
    (["chunked", "--q-len", "10", "--chunk-size", "4"], oracle.chunked_mask(10, chunk_size=4)),
    (["segment", "--segments", "0,0,1,1,1,2"], oracle.segment_mask(np.array([[0, 0, 1, 1, 1, 2]]))),
    (["segment", "--segments", "0,0,1;0,1,1", "--pad-id", "1"],
     oracle.segment_mask(np.array([[0, 0, 1], [0, 1, 1]]), pad_id=1)),
    (["padding", "--lengths", "4,1,6,3", "--max-len", "6"],
     oracle.attention_padding_mask(oracle.padding_mask(np.array([4, 1, 6, 3]), 6))),
    (["padding", "--lengths", "2,3", "--max-len", "4", "--side", "left", "--pad-queries"],
     oracle.attention_padding_mask(oracle.padding_mask(np.array([2, 3]), 4, side="left"),
                                   oracle.padding_mask(np.array([2, 3]), 4, side="left"))),
    (["prefix_lm", "--prefix-lengths", "2,4", "--q-len", "6"], oracle.prefix_lm_mask(np.array([2, 4]), 6)),
    (["causal+padding", "--lengths", "5,3", "--max-len", "5"],
     oracle.and_masks(oracle.causal_mask(5), oracle.attention_padding_mask(oracle.padding_mask(np.array([5, 3]), 5)))),
    (["segment+causal", "--segments", "0,0,0,1,1"],
     oracle.and_masks(oracle.segment_mask(np.array([[0, 0, 0, 1, 1]])), oracle.causal_mask(5))),
]


@pytest.mark.parametrize("argv, expected", KIND_ARGS, ids=[" ".join(a[:1] + a[1:3]) for a, _ in KIND_ARGS])
def test_every_kind_matches_the_oracle(capsys, argv, expected):
    out = _show(capsys, *argv)
    expected = np.asarray(expected)
    items = [expected] if expected.ndim == 2 else [expected[b, 0] for b in range(expected.shape[0])]
    s = items[0].shape[-1]
    grids = _grids(out)
    assert len(grids) == len(items)
    for grid, want in zip(grids, items, strict=True):
        want = np.broadcast_to(want, (len(grid), s))
        drawn = np.array([[row[2 * j:2 * j + 2] == "██" for j in range(s)] for row in grid])
        np.testing.assert_array_equal(drawn, want)


@pytest.mark.parametrize("argv, message", [
    (["sliding_window"], "--window"),
    (["segment"], "--segments"),
    (["padding"], "--lengths"),
    (["prefix_lm"], "--prefix-lengths"),
    (["chunked"], "--chunk-size"),
    (["triangle"], "unknown mask kind"),
    (["padding", "--lengths", "9", "--max-len", "4"], "lengths"),
])
def test_bad_options_are_explained(capsys, argv, message):
    assert main(["show", *argv]) == 2
    assert message in capsys.readouterr().err


@needs_matplotlib
def test_png(tmp_path, capsys):
    path = tmp_path / "mask.png"
    assert main(["show", "causal+padding", "--lengths", "5,3", "--max-len", "5", "--png", str(path)]) == 0
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


@needs_matplotlib
def test_png_module_uses_no_pyplot(tmp_path):
    """_plot draws with Figure + the Agg canvas: no pyplot, no global backend state."""
    import subprocess
    import sys

    png = str(tmp_path / "c.png")
    code = (f"import sys; from refmask import _plot, oracle; _plot.save_png(oracle.causal_mask(3), {png!r}); "
            "print('matplotlib.pyplot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_png_without_matplotlib_says_how_to_install(tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert main(["show", "causal", "--q-len", "3", "--png", str(tmp_path / "x.png")]) == 1
    assert 'pip install "refmask[plot]"' in capsys.readouterr().err


def test_show_does_not_import_frameworks():
    import subprocess
    import sys

    code = "import sys; from refmask.cli import main; main(['show', 'causal', '--q-len', '2']); " \
           "print(sorted(m for m in ('torch', 'jax', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_parse_kinds():
    assert show.parse_kinds("causal+sliding-window") == ["causal", "sliding_window"]
