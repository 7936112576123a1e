"""One cell of the matrix (a native path on a case family) and the text it shows."""

from __future__ import annotations

from dataclasses import dataclass, field

POLICIES = ("zero", "uniform", "nan")


@dataclass
class Cell:
    path: str
    case: str
    status: str  # "agrees" | "differs" | "not expressible" | "error"
    policies: list[str] = field(default_factory=list)  # the fully_masked policies it agrees under
    alignment: str = ""  # for T != S causal cases: the alignment it agrees with
    max_error: float | str | None = None  # differs: max |native - oracle| over rows with a kept key, or "NaN"
    reason: str = ""

    def text(self, note: int | None = None) -> str:
        if self.status == "agrees":
            parts = [] if len(self.policies) == len(POLICIES) else ["/".join(self.policies)]
            parts += [self.alignment] if self.alignment else []
            return " ".join(["✓", ", ".join(parts)]).strip()
        if self.status == "not expressible":
            return "–"
        mark = "✗" if self.status == "differs" else "ERR"
        return f"{mark} [{note}]" if note is not None else mark
