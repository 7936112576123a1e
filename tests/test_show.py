"""`refmask show` and refmask.show: every mask kind in the terminal, hand-drawn grids (plain, aggregated,
diffs), argument errors, and pictures (their pixels, their size, their speed's cause: one image, not a
patch per entry)."""

from __future__ import annotations

import re
import struct

import numpy as np
import pytest

import refmask
from refmask import _show_cli, oracle
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
    # S from the lengths, as --kv-len's help says, while T is given.
    (["causal+padding", "--q-len", "4", "--lengths", "5,3"],
     oracle.and_masks(oracle.causal_mask(4, 5),
                      oracle.attention_padding_mask(oracle.padding_mask(np.array([5, 3]), 5)))),
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
    (["causal", "--window", "3"], "--window does not apply to causal (it is an option of sliding_window)"),
    (["padding", "--lengths", "2,3", "--align", "bottom_right"], "--align does not apply to padding"),
    (["segment", "--segments", "0,1", "--lengths", "2"], "--lengths does not apply to segment"),
    (["causal+sliding_window", "--window", "2", "--side", "left"], "--side does not apply to causal+sliding_window"),
    (["padding", "--lengths", "3", "--max-len", "4", "--kv-len", "5"], "--max-len (the padded length, S) and --kv-len"),
    (["causal", "--png", "mask.jpg"], "png must name a .png file (the picture is written as PNG only)"),
    (["causal", "--png", "/no/such/dir/x.png"], "png: the folder '/no/such/dir' does not exist"),
    (["causal", "--width", "5"], "width must be >= 20"),
])
def test_bad_options_are_explained(capsys, argv, message):
    assert main(["show", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()  # one line, no traceback
    assert message in line


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
    code = (f"import sys, refmask; refmask.show(refmask.causal_mask(3), png={png!r}); "
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
    assert _show_cli.parse_kinds("causal+sliding-window") == ["causal", "sliding_window"]


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"refmask {refmask.__version__}\n"


@needs_matplotlib
def test_png_that_cannot_be_written_is_one_line(tmp_path, capsys):
    folder = tmp_path / "taken.png"
    folder.mkdir()  # a folder where the file should go
    assert main(["show", "causal", "--q-len", "3", "--png", str(folder)]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"refmask show: cannot write {folder}: ")


# ----------------------------------------------------------------------------------------------
# refmask.show, the public function


def test_show_draws_what_the_command_draws():
    mask = oracle.causal_mask(4, 6, align="bottom_right")
    assert refmask.show(mask, title="causal align=bottom_right; T=4 queries, S=6 keys") == CAUSAL_4x6_BOTTOM_RIGHT


def test_show_takes_anything_numpy_reads():
    out = refmask.show([[True, False], [True, True]], width=80)
    assert out.splitlines()[0] == "mask, shape (2, 2): T=2 queries, S=2 keys"
    assert _grids(out) == [["██ ·", "████"]]


def _drawn(grid: list[str], s: int) -> np.ndarray:
    return np.array([[row[2 * j:2 * j + 2] == "██" for j in range(s)] for row in grid])


def test_batched_masks_draw_one_grid_per_leading_index():
    mask = np.random.default_rng(0).random((2, 3, 4, 5)) < 0.5
    out = refmask.show(mask)
    labels = [line for line in out.splitlines() if line.startswith("batch")]
    assert labels == [f"batch {b}, head {h}:" for b in range(2) for h in range(3)]
    for grid, want in zip(_grids(out), mask.reshape(6, 4, 5), strict=True):
        np.testing.assert_array_equal(_drawn(grid, 5), want)
    one = refmask.show(mask, batch=(1, 2))
    assert [line for line in one.splitlines() if line.startswith("batch")] == ["batch 1, head 2:"]
    np.testing.assert_array_equal(_drawn(_grids(one)[0], 5), mask[1, 2])
    assert len(_grids(refmask.show(mask, batch=1))) == 3


def test_diff_hand_drawn():
    causal = oracle.causal_mask(3)
    ahead = oracle.sliding_window_mask(3, window=(0, 1))  # key i and i + 1
    assert refmask.show(causal, compare_to=ahead, labels=("causal", "ahead"), width=80) == """\
causal against ahead, shape (3, 3): T=3 queries, S=3 keys
causal and ahead differ at 5 of 9 entries: 3 only causal attends (++), 2 only
ahead attends (--)

        key j →
         0 1 2
query 0 ██-- ·
i ↓   1 ++██--
      2 ++++██

██ both attend   · both masked   ++ only causal attends   -- only ahead attends
"""


def test_diff_broadcasts_and_names_rows_with_no_key_in_one_mask():
    valid = oracle.padding_mask(np.array([3, 1]), 3)
    padded = oracle.attention_padding_mask(valid, valid)
    out = refmask.show(oracle.causal_mask(3), compare_to=padded, labels=("refmask", "torch"))
    assert [line for line in out.splitlines() if line.startswith("batch")] == ["batch 0:", "batch 1:"]
    rows = out.splitlines()
    # batch 0: padding keeps every key, causal only the past; batch 1: padding keeps key 0 for query 0 only.
    assert rows[rows.index("batch 0:") + 3:][:3] == ["query 0 ██----", "i ↓   1 ████--", "      2 ██████"]
    assert rows[rows.index("batch 1:") + 3:][:3] == [
        "query 0 ██ · ·", "i ↓   1 ++++ ·  (no key in torch only)", "      2 ++++++  (no key in torch only)"]


def test_agreeing_masks_say_so():
    out = refmask.show(oracle.causal_mask(4), compare_to=np.tril(np.ones((4, 4), bool)))
    assert out.splitlines()[1] == "mask and compare_to agree at all 16 entries"


def test_wide_mask_is_aggregated_hand_worked():
    """T = S = 30 in 20 columns: 8 columns of row label leave 12, so each character is 3 keys wide and
    6 queries tall. Block (i, j) holds queries 6i..6i+5 and keys 3j..3j+2 of the causal mask: every key
    of it is kept when 3j + 2 <= 6i, none when 3j > 6i + 5, some otherwise."""
    out = refmask.show(oracle.causal_mask(30), width=20)
    rows = [line for line in out.splitlines() if re.match(r"^(query|i ↓)?\s+\d+ ", line)]
    assert rows == [
        "query  0 ▒▒········",
        "i ↓    6 ██▒▒······",
        "      12 ████▒▒····",
        "      18 ██████▒▒··",
        "      24 ████████▒▒",
    ]
    assert "each character: 6 queries x 3 keys; █ every entry may attend ▒ some · none" in " ".join(out.split())


@pytest.mark.parametrize("width", [24, 40, 80])
def test_aggregated_glyphs_are_full_partial_empty(width):
    """Each character of an aggregated grid: █ when every entry of its block may attend, · when none,
    ▒ otherwise (checked block by block against the mask)."""
    rng = np.random.default_rng(width)
    mask = np.tril(rng.random((90, 130)) < 0.9, k=40) | (rng.random((90, 130)) < 0.02)
    mask[:, 100:] = True
    out = refmask.show(mask, width=width, ascii=True)
    found = re.search(r"each character: (\d+) queries x (\d+) keys", " ".join(out.split()))
    assert found is not None
    r, c = map(int, found.groups())
    rows = [m.group(1) for line in out.splitlines() if (m := re.match(r"^(?:query|i v)?\s+\d+ ([#+.]+)", line))]
    assert len(rows) == -(-90 // r) and {len(row) for row in rows} == {-(-130 // c)}
    for i, row in enumerate(rows):
        for j, glyph in enumerate(row):
            block = mask[i * r:(i + 1) * r, j * c:(j + 1) * c]
            assert glyph == ("#" if block.all() else "." if not block.any() else "+"), (i, j)


def test_rows_with_no_key_are_noted_when_aggregated():
    mask = np.ones((30, 30), bool)
    mask[13] = False
    mask[20:] = False
    rows = refmask.show(mask, width=40).splitlines()
    assert "      12 ▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒  (1 no key)" in rows  # queries 12..15: query 13 has no key
    assert all(f"{i:>8} {'·' * 15}  (no key)" in rows for i in (20, 24, 28))
    assert "       8 ███████████████" in rows


@pytest.mark.parametrize("width", [20, 45, 80, 133])
def test_no_line_is_wider_than_the_width(width):
    rng = np.random.default_rng(1)
    a = rng.random((2, 1, 300, 700)) < 0.5
    a[1, :, 40:] = False
    b = np.tril(np.ones((300, 700), bool), k=400)
    for text in (refmask.show(a, width=width), refmask.show(a[0, 0, :5, :9], width=width),
                 refmask.show(a, compare_to=b, labels=("a library's own mask", "refmask"), width=width)):
        assert max(len(line) for line in text.splitlines()) <= width


def test_show_takes_the_terminal_width_by_default(monkeypatch):
    monkeypatch.setenv("COLUMNS", "50")
    assert max(len(line) for line in refmask.show(oracle.causal_mask(100)).splitlines()) <= 50


@pytest.mark.parametrize("kwargs, error, message", [
    ({"mask": np.ones((2, 2), int)}, TypeError, "mask must be a boolean array (True = may attend); got dtype int64"),
    ({"mask": "causal"}, TypeError, "mask must be an array; got str"),
    ({"mask": np.ones(3, bool)}, ValueError, "mask must have at least 2 dimensions (..., T, S)"),
    ({"compare_to": np.ones((2, 2), float)}, TypeError, "compare_to must be a boolean array"),
    ({"compare_to": np.ones((3, 5), bool)}, ValueError,
     "mask of shape (2, 4, 4) and compare_to of shape (3, 5) do not broadcast together"),
    ({"batch": 2}, ValueError, "batch 2 is out of range for the leading axes (2,)"),
    ({"batch": (0, 0)}, ValueError, "batch indexes the leading axes (2,)"),
    ({"batch": 0.5}, TypeError, "batch must be an int; got float 0.5"),
    ({"format": "svg"}, ValueError, "format must be one of 'text', 'figure'; got 'svg'"),
    ({"png": "mask.jpg"}, ValueError, "png must name a .png file"),
    ({"png": 3}, TypeError, "png must be a file path"),
    ({"png": "/no/such/dir/x.png"}, ValueError, "png: the folder '/no/such/dir' does not exist"),
    ({"width": 5}, ValueError, "width must be >= 20; got 5"),
    ({"width": "wide"}, TypeError, "width must be an int"),
    ({"labels": ("a",)}, TypeError, "labels must be a pair of strings"),
    ({"labels": ("a", "a")}, ValueError, "labels must be two different non-empty strings"),
    ({"ascii": "yes"}, TypeError, "ascii must be a bool"),
    ({"title": 3}, TypeError, "title must be a str or None"),
    ({"mask": np.zeros((3, 0), bool), "format": "figure"}, ValueError, "has no entries to draw as a picture"),
])
def test_bad_arguments_name_the_argument(kwargs, error, message):
    args = {"mask": np.ones((2, 4, 4), bool), **kwargs}
    with pytest.raises(error) as err:
        refmask.show(args.pop("mask"), **args)
    assert message in str(err.value)


def test_a_picture_of_too_many_grids_is_refused():
    with pytest.raises(ValueError, match=r"at most 64 grids; this mask has 65 .*: choose some with batch="):
        refmask.show(np.ones((65, 2, 2), bool), format="figure")


# ----------------------------------------------------------------------------------------------
# pictures


def _png_size(path) -> tuple[int, int]:
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    return width, height


def _pixel(fig, ax, image, x: float, y: float) -> tuple[int, ...]:
    """The colour drawn at data point (x, y) of `ax` (key, query) in the saved image."""
    px, py = ax.transData.transform((x, y))
    return tuple(int(v) for v in image.getpixel((int(px), image.size[1] - 1 - int(py)))[:3])


def _rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


@needs_matplotlib
def test_large_mask_is_one_image_of_a_sane_size(tmp_path):
    """A 2048 x 2048 mask is one image (no patch per entry) in a picture under 1000 x 1000 pixels, with
    the colours where the mask says and the rows with no kept key marked."""
    from PIL import Image

    from refmask import _plot

    t = 2048
    mask = oracle.and_masks(oracle.causal_mask(t), np.arange(t)[:, None] < 1500)  # queries 1500.. see no key
    path = tmp_path / "big.png"
    fig = refmask.show(mask, format="figure", png=path)
    width, height = _png_size(path)
    assert 500 < width < 1000 and 500 < height < 1000
    grid = next(ax for ax in fig.axes if ax.get_xlabel() == "key j")
    assert len(grid.images) == 1 and not grid.patches
    image = Image.open(path).convert("RGB")
    assert _pixel(fig, grid, image, 100, 1000) == _rgb(_plot.KEPT_COLOR)
    assert _pixel(fig, grid, image, 1900, 300) == _rgb(_plot.MASKED_COLOR)
    assert _pixel(fig, grid, image, 100, 1800) == _rgb(_plot.MASKED_COLOR)
    [bar] = grid.child_axes
    assert bar.images  # the red bar beside queries 1500..2047
    colors = np.asarray(image).reshape(-1, 3)
    assert (colors == _rgb(_plot.NO_KEY_COLOR)).all(axis=1).sum() > 100


@needs_matplotlib
def test_diff_picture_colours_each_kind_of_disagreement(tmp_path):
    from PIL import Image

    from refmask import _plot

    path = tmp_path / "diff.png"
    fig = refmask.show(oracle.causal_mask(3), compare_to=oracle.sliding_window_mask(3, window=(0, 1)),
                       labels=("causal", "ahead"), format="figure", png=path)
    [grid] = [ax for ax in fig.axes if ax.get_xlabel() == "key j"]
    image = Image.open(path).convert("RGB")
    assert _pixel(fig, grid, image, 0, 0) == _rgb(_plot.KEPT_COLOR)  # both attend
    assert _pixel(fig, grid, image, 0, 2) == _rgb(_plot.ONLY_A_COLOR)  # only causal
    assert _pixel(fig, grid, image, 1, 0) == _rgb(_plot.ONLY_B_COLOR)  # only ahead: key 1 for query 0
    assert _pixel(fig, grid, image, 2, 0) == _rgb(_plot.MASKED_COLOR)
    assert {t.get_text() for t in fig.legends[0].get_texts()} == {
        "both attend", "both masked", "only causal attends", "only ahead attends"}
    assert _png_size(path)[0] < 1000


@needs_matplotlib
def test_figure_has_one_grid_per_batch_item():
    mask = oracle.attention_padding_mask(oracle.padding_mask(np.array([2, 4, 0]), 4))
    fig = refmask.show(mask, format="figure")
    assert [t.get_text() for ax in fig.axes for t in ax.texts] == ["batch 0", "batch 1", "batch 2"]
