"""One measurement of `refmask bench` (a Row), its target and result, and how its numbers print."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# A reference of a case: (its key among the timed functions, what it is, the Row's targets on it).
Ref = tuple[str, str, dict[str, Any]]
# What a case times on one backend: the functions (refmask's under "refmask"), the references, the subject.
Measure = tuple[dict[str, Callable[[], Any]], list[Ref], str]


@dataclass
class Row:
    """One measurement: refmask's `value` against `ref_value` (seconds, or bytes for case 4 and 5)."""

    case: int
    backend: str
    subject: str  # what refmask runs
    reference: str  # what it is compared with
    value: float | None = None
    ref_value: float | None = None
    unit: str = "s"  # "s" (time per call), "bytes" or "ULP"
    max_ratio: float | None = None  # target on value / ref_value
    max_value: float | None = None  # target on value itself
    passed: bool | None = None  # a target judged elsewhere (mask shapes)
    note: str = ""
    skipped: str = ""  # why there is no measurement

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.ref_value:
            return None
        return self.value / self.ref_value

    @property
    def target(self) -> str:
        if self.max_ratio is not None:
            return f"<= {self.max_ratio:.0%}" if self.unit == "bytes" else f"<= {self.max_ratio:.2f}"
        if self.max_value is not None:
            return f"<= {fmt(self.max_value, self.unit)}"
        if self.passed is not None:
            return "smallest shape"
        return ""

    @property
    def result(self) -> str:
        if self.skipped:
            return "skipped"
        if self.max_ratio is not None and self.ratio is not None:
            return "PASS" if self.ratio <= self.max_ratio else "FAIL"
        if self.max_value is not None and self.value is not None:
            return "PASS" if self.value <= self.max_value else "FAIL"
        if self.passed is not None:
            return "PASS" if self.passed else "FAIL"
        return "info"


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ULP":
        return f"{value:g} ULP"
    if unit == "bytes":
        for size, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if value >= size:
                return f"{value / size:.1f} {name}"
        return f"{int(value)} B"
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.1f} ms"
    return f"{value * 1e6:.1f} us"


def fmt_ratio(row: Row) -> str:
    r = row.ratio
    if r is None:
        return "-"
    return f"{r:.1%}" if row.unit == "bytes" else f"{r:.2f}"


def own_row(case: int, backend: str, subject: str, times: dict[str, float | str], max_value: float,
            note: str = "") -> Row:
    """refmask's own time `times["refmask"]` against a target on the time itself (no reference)."""
    row = Row(case, backend, subject, "", max_value=max_value, note=note)
    mine = times.get("refmask")
    if isinstance(mine, str):
        row.skipped = mine
    else:
        row.value = mine
    return row


def rows_from_times(
    case: int, backend: str, times: dict[str, float | str], subject: str, refs: list[Ref]
) -> list[Row]:
    """One row per native reference: refmask's time `times["refmask"]` against `times[key]`."""
    rows = []
    for key, label, extra in refs:
        row = Row(case, backend, subject, label, **extra)
        mine, theirs = times.get("refmask"), times.get(key)
        if isinstance(mine, str):
            row.skipped = f"refmask: {mine}"
        elif isinstance(theirs, str):
            row.skipped = f"reference: {theirs}"
        else:
            row.value, row.ref_value = mine, theirs
        rows.append(row)
    return rows
