"""`python -m comparisons.gpu`: the GPU run, in under 8 minutes, from the repository root, with no network
and no install (the checkout goes on each stage's PYTHONPATH).

Each stage is a subprocess under its own timeout (STAGES; their sum fits BUDGET_S, and a stage gets
no more than what is left of it, less the time to stop it), stopped with its children when it runs over:

1. device: the GPU, driver and versions; prints the one line saying which GPU, or that there is none;
2. tests-torch, tests-jax: tests/test_cross_backend.py with REFMASK_TEST_DEVICE=cuda (the harness puts
   torch's tensors on CUDA and jax's arrays on the GPU), the torch variants and the jax ones apart, so
   that one running long leaves the other its time;
3. matrix: the CUDA paths over every case (comparisons/gpu/matrix.py), as RESULTS-cuda.md;
4. bench: refmask's attention against SDPA's flash and cuDNN kernels and jax's cuDNN attention.

Without a CUDA device the tests and the timings are skipped and the matrix runs, each CUDA path not
expressible ("no CUDA device"). Files: comparisons/RESULTS-cuda.md when there is a GPU (--results to
choose), and in --out (default $OUT, else a new temporary folder) these 6: RESULTS-cuda.md,
cuda-matrix.json, cuda-bench.md, cuda-tests-torch.log, cuda-tests-jax.log, cuda-run.log.
Exit status 0 when every stage that ran passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from .device import status_line

ROOT = Path(__file__).resolve().parents[2]
BUDGET_S = 480
MARGIN_S = 15  # for starting, copying the files and the last lines
# A stage that runs over is stopped with SIGINT to its leader alone (pytest then stops its workers and
# prints what passed and failed so far), then SIGTERM and SIGKILL to its whole group; the seconds each waits.
STOP_SIGNALS = ((signal.SIGINT, 15), (signal.SIGTERM, 3), (signal.SIGKILL, 5))
STOP_GRACE_S = sum(wait for _, wait in STOP_SIGNALS)
JIT_TEST = ("tests/test_cross_backend.py::"
            "test_jit_variant_traces_once_per_function_and_static_arguments_for_every_policy")
DEVICE_ENV = "REFMASK_TEST_DEVICE"


@dataclass(frozen=True)
class Stage:
    name: str
    timeout_s: int
    needs: str | None  # the GPU it needs: "torch", "jax", "either", or None


STAGES = (
    Stage("device", 40, None),
    Stage("tests-torch", 90, "torch"),
    Stage("tests-jax", 90, "jax"),
    Stage("matrix", 160, None),
    Stage("bench", 55, "either"),
)


@dataclass(frozen=True)
class Outcome:
    rc: int | None  # None: stopped at its timeout
    seconds: float


# runner(command, env, log, timeout_s) runs one stage, its output to `log`.
Runner = Callable[[list[str], dict[str, str], Path, float], Outcome]


def _stop(proc: subprocess.Popen[Any]) -> None:
    """End a stage's whole process group (pytest-xdist's workers with it), one signal of STOP_SIGNALS
    after the other until it is gone."""
    for sig, wait_s in STOP_SIGNALS:
        try:
            if sig == signal.SIGINT:
                os.kill(proc.pid, sig)
            else:
                os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def run_subprocess(command: list[str], env: dict[str, str], log: Path, timeout_s: float) -> Outcome:
    """The stage as a subprocess of its own session in the repository root, stopped at timeout_s."""
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _stop(proc)
            rc = None
    return Outcome(rc, time.perf_counter() - started)


def stage_env(tests: bool) -> dict[str, str]:
    """The environment of a stage: this checkout importable, jax not holding most of the GPU (several
    processes share it), no network for Hugging Face; for the tests, the device switch."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["PYTHONUNBUFFERED"] = "1"
    if tests:
        env[DEVICE_ENV] = "cuda"
    return env


def _refmask_plugin() -> list[str]:
    """-p refmask.testing.plugin unless pytest loads it by itself (refmask installed): the checkout on
    PYTHONPATH has no entry point, and the plugin's --refmask-backends chooses each stage's variants."""
    installed = any(ep.name == "refmask" for ep in metadata.entry_points(group="pytest11"))
    return [] if installed else ["-p", "refmask.testing.plugin"]


def command(stage: str, timeout_s: float, args: argparse.Namespace, files: dict[str, Path]) -> list[str]:
    """The command line of a stage, given the time it has."""
    py = sys.executable
    info = ["--device-json", str(files["device"])] if files["device"].exists() else []
    if stage == "device":
        return [py, "-m", "comparisons.gpu.device", "--json", str(files["device"])]
    if stage.startswith("tests-"):
        backend = stage.removeprefix("tests-")
        # addopts replaced: its "-n auto" needs pytest-xdist, which a GPU machine may lack. One line per
        # failure, as thousands of tracebacks would bury the summary.
        workers = ["-n", str(args.workers)] if importlib.util.find_spec("xdist") is not None else []
        selection = ["-k", args.tests_k] if args.tests_k else []
        if backend == "torch":  # the one jax test that takes no variant runs with the jax stage
            selection += ["--deselect", JIT_TEST]
        return [py, "-m", "pytest", "tests/test_cross_backend.py", "-o", "addopts=", "--strict-markers", *workers,
                "-q", "--tb=line", "-rfE", "--durations=10", "-p", "no:cacheprovider", *_refmask_plugin(),
                f"--refmask-backends={backend}", *selection]
    if stage == "matrix":
        selection = [w for c in args.case or [] for w in ("--case", c)]
        selection += [w for p in args.path or [] for w in ("--path", p)]
        return [py, "-m", "comparisons.gpu.matrix", "--output", str(files["results"]), "--json",
                str(files["matrix.json"]), "--budget", str(max(5, int(timeout_s) - 25)), *info, *selection]
    return [py, "-m", "comparisons.gpu.bench", "--output", str(files["bench"]), *info]


def _has_gpu(info: dict[str, Any], needs: str | None) -> bool:
    """Whether the device stage found the GPU `needs` names (None: needs none)."""
    torch_ok, jax_ok = bool(info.get("has_torch_cuda")), bool(info.get("has_jax_gpu"))
    return {None: True, "torch": torch_ok, "jax": jax_ok, "either": torch_ok or jax_ok}[needs]


def _why_not(stage: Stage, info: dict[str, Any], left_s: float) -> str | None:
    """Why `stage` does not run (no GPU for it, no pytest, no time left), or None."""
    if not _has_gpu(info, stage.needs):
        return f"no GPU for {'torch or jax' if stage.needs == 'either' else stage.needs}"
    if stage.name.startswith("tests-") and importlib.util.find_spec("pytest") is None:
        return "pytest is not installed"
    if left_s < 10:
        return f"the run's {BUDGET_S} s are spent"
    return None


def _results_path(args: argparse.Namespace, info: dict[str, Any], out: Path) -> Path:
    """--results, else comparisons/RESULTS-cuda.md with a GPU (a run without one must not overwrite it)."""
    if args.results:
        return Path(args.results)
    return ROOT / "comparisons" / "RESULTS-cuda.md" if _has_gpu(info, "either") else out / "RESULTS-cuda.md"


class RunLog:
    """What the run prints, kept in cuda-run.log too, with each stage's own output."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_text("", encoding="utf-8")

    def line(self, text: str) -> None:
        print(text, flush=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(text + "\n")

    def stage_output(self, name: str, log: Path, shown: int) -> None:
        """The stage's output into the run log; its last `shown` lines printed."""
        text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"--- {name} output ---\n{text}\n")
        for row in text.rstrip().splitlines()[-shown:] if shown else []:
            print(f"  | {row}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options; --stages names checked (argparse's error, exit status 2, on an unknown one)."""
    parser = argparse.ArgumentParser(prog="python -m comparisons.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", metavar="DIR", help="where the files go (default: $OUT, else a new temporary folder)")
    parser.add_argument("--results", metavar="FILE", help="RESULTS-cuda.md's path (default: "
                        "comparisons/RESULTS-cuda.md with a GPU, DIR/RESULTS-cuda.md without)")
    parser.add_argument("--stages", default=",".join(s.name for s in STAGES[1:]),
                        help="comma-separated stages to run after device (default: all)")
    parser.add_argument("--workers", type=int, default=8, help="pytest-xdist workers of the test stages (default: 8)")
    parser.add_argument("--tests-k", metavar="EXPR", help="narrow the test stages with pytest -k EXPR")
    parser.add_argument("--case", action="append", metavar="ID", help="the matrix: only this case (repeatable)")
    parser.add_argument("--path", action="append", metavar="SUBSTRING",
                        help="the matrix: only paths whose id contains SUBSTRING (repeatable)")
    args = parser.parse_args(argv)
    known = {s.name for s in STAGES}
    args.stage_names = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in args.stage_names if s not in known]
    if unknown:
        parser.error(f"--stages: unknown {', '.join(unknown)}; the stages are {', '.join(s.name for s in STAGES[1:])}")
    return args


def main(argv: list[str] | None = None, runner: Runner = run_subprocess) -> int:
    """Run the stages in order within BUDGET_S; the files end up in --out."""
    args = parse_args(argv)
    out = Path(args.out or os.environ.get("OUT") or tempfile.mkdtemp(prefix="refmask-gpu-"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="refmask-gpu-stages-"))
    files = {"device": work / "device.json", "matrix.json": out / "cuda-matrix.json", "bench": out / "cuda-bench.md",
             "results": out / "RESULTS-cuda.md"}
    for name in ("tests-torch", "tests-jax"):
        files[f"{name}.log"] = out / f"cuda-{name}.log"
    log = RunLog(out / "cuda-run.log")
    started = time.perf_counter()
    info: dict[str, Any] = {}
    failed: list[str] = []
    for stage in STAGES:
        if stage.name != "device" and stage.name not in args.stage_names:
            continue
        timeout = min(stage.timeout_s, BUDGET_S - MARGIN_S - STOP_GRACE_S - (time.perf_counter() - started))
        why = _why_not(stage, info, timeout)
        if why is not None:
            log.line(f"{stage.name}: skipped, {why}")
            failed += [stage.name] if why.startswith("pytest") else []
            continue
        if stage.name == "matrix":
            files["results"] = _results_path(args, info, out)
        tests = stage.name.startswith("tests-")
        stage_log = files[f"{stage.name}.log"] if tests else work / f"{stage.name}.log"
        outcome = runner(command(stage.name, timeout, args, files), stage_env(tests), stage_log, timeout)
        if outcome.rc != 0:
            failed.append(stage.name)
        ran = "stopped at its timeout" if outcome.rc is None else f"exit {outcome.rc}"
        log.line(f"{stage.name}: {ran} after {outcome.seconds:.0f} s (timeout {timeout:.0f} s)")
        # The device stage's one line is printed below, from what it found; its output only when it failed.
        log.stage_output(stage.name, stage_log, shown=0 if stage.name == "device" and outcome.rc == 0 else 12)
        if stage.name == "device":
            info = json.loads(files["device"].read_text(encoding="utf-8")) if files["device"].exists() else {}
            log.line(status_line(info) if info else "device: found nothing (its output is above): as without a GPU")
    if files["results"].exists() and files["results"].resolve() != (out / "RESULTS-cuda.md").resolve():
        shutil.copy(files["results"], out / "RESULTS-cuda.md")
    shutil.rmtree(work, ignore_errors=True)
    written = sorted(p.name for p in out.iterdir() if p.is_file())
    log.line(f"done in {time.perf_counter() - started:.0f} s; in {out}: {', '.join(written)}"
             + (f"; failed or stopped: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
