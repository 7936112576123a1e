"""The GPU run (`python -m comparisons.gpu`) without a GPU: what it does when there is none, its stages and
their time, the harness's device switch, and the CUDA adapters' own logic on the CPU.

The adapters' kernels need CUDA; what they do around them (rounding to half precision, padding the head
dim, the additive mask, the mask_mod, the structure arguments, the gradients) is checked here by running
them on the CPU: torch's device replaced by the CPU (whose SDPA has math and flash kernels), flex_attention
run eagerly instead of compiled, jax's "xla" implementation in place of "cudnn".
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from comparisons.cases import all_cases
from comparisons.gpu import __main__ as gpu_run
from comparisons.gpu import _inputs
from comparisons.gpu import device as gpu_device
from comparisons.matrix.evaluate import evaluate
from refmask._backends import unavailable_reason

CASES = {c.id: c for c in all_cases()}


def _needs(*frameworks: str) -> None:
    for name in frameworks:
        why = unavailable_reason(name)
        if why is not None:
            pytest.skip(why)


def in_process(commands: list[list[str]]):
    """A stage runner that runs `python -m comparisons.gpu.<stage>` in this process (no interpreter to
    start), its output to the stage's log, and records every command it is given."""

    def run(command, env, log, timeout_s):
        commands.append(command)
        assert command[1] == "-m" and command[2].startswith("comparisons.gpu."), command
        module = importlib.import_module(command[2])
        with open(log, "w", encoding="utf-8") as f, contextlib.redirect_stdout(f):
            rc = module.main(command[3:])
        return gpu_run.Outcome(rc, 0.0)

    return run


@pytest.fixture
def no_gpu(monkeypatch):
    """This machine as one without a GPU, whatever it has."""
    monkeypatch.setattr(gpu_device, "torch_cuda_device", lambda: None)
    monkeypatch.setattr(gpu_device, "jax_gpu_device", lambda: None)


def test_the_stages_fit_in_eight_minutes():
    # Every stage at its full timeout, and the last one stopped at it, still end within the budget.
    total = sum(s.timeout_s for s in gpu_run.STAGES) + gpu_run.STOP_GRACE_S + gpu_run.MARGIN_S
    assert total <= gpu_run.BUDGET_S <= 8 * 60
    assert [s.name for s in gpu_run.STAGES] == ["device", "tests-torch", "tests-jax", "matrix", "bench"]


def test_without_a_gpu_the_run_says_so_in_one_line_and_writes_the_matrix(tmp_path, capsys, no_gpu):
    commands: list[list[str]] = []
    rc = gpu_run.main(["--out", str(tmp_path), "--case", "causal-square"], runner=in_process(commands))
    printed = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert len([line for line in printed if line.startswith(gpu_device.NO_CUDA)]) == 1
    assert [c[2] for c in commands] == ["comparisons.gpu.device", "comparisons.gpu.matrix"]  # no tests, no timings
    assert {"tests-torch: skipped, no GPU for torch", "tests-jax: skipped, no GPU for jax",
            "bench: skipped, no GPU for torch or jax"} <= set(printed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RESULTS-cuda.md", "cuda-matrix.json", "cuda-run.log"]
    result = json.loads((tmp_path / "cuda-matrix.json").read_text(encoding="utf-8"))
    installed = {s["framework"] for s in result["skipped"]} ^ {"torch-cuda", "jax-gpu", "torch-cuda-compile"}
    assert {p["framework"] for p in result["paths"]} == installed
    # Each installed CUDA path has its cell, saying there is no CUDA device.
    assert len(result["cells"]) == len(result["paths"])
    assert {(c["case"], c["status"], c["reason"]) for c in result["cells"]} <= {
        ("causal-square", "not expressible", gpu_device.NO_CUDA)}
    report = (tmp_path / "RESULTS-cuda.md").read_text(encoding="utf-8")
    assert report.startswith("# GPU paths against the refmask oracle") and "- GPU: no CUDA device" in report


def test_with_a_gpu_every_stage_runs_in_order_within_the_budget(tmp_path, capsys):
    seen: list[tuple[list[str], dict[str, str], float]] = []

    def fake(command, env, log, timeout_s):
        seen.append((command, env, timeout_s))
        if command[2] == "comparisons.gpu.device":
            info = {**gpu_device.describe(), "has_torch_cuda": True, "has_jax_gpu": True, "torch_gpu": "a GPU"}
            Path(command[command.index("--json") + 1]).write_text(json.dumps(info), encoding="utf-8")
        log.write_text("ran\n", encoding="utf-8")
        return gpu_run.Outcome(None if "--refmask-backends=torch" in command else 0, 1.0)

    rc = gpu_run.main(["--out", str(tmp_path), "--tests-k", "alibi"], runner=fake)
    printed = capsys.readouterr().out
    assert rc == 1 and "tests-torch: stopped at its timeout" in printed and "failed or stopped: tests-torch" in printed
    assert [c[2] for c, _, _ in seen] == ["comparisons.gpu.device", "pytest", "pytest", "comparisons.gpu.matrix",
                                          "comparisons.gpu.bench"]
    assert sum(t for _, _, t in seen) <= gpu_run.BUDGET_S
    (torch_tests, env, _), (jax_tests, _, _) = seen[1], seen[2]
    assert "tests/test_cross_backend.py" in torch_tests and env["REFMASK_TEST_DEVICE"] == "cuda"
    assert env["PYTHONPATH"].split(":")[0] == str(gpu_run.ROOT)
    for tests, backend in ((torch_tests, "torch"), (jax_tests, "jax")):
        assert f"--refmask-backends={backend}" in tests and tests[tests.index("-k") + 1] == "alibi"
    assert gpu_run.JIT_TEST in torch_tests and gpu_run.JIT_TEST not in jax_tests  # the jit test runs once
    matrix = seen[3][0]
    assert Path(matrix[matrix.index("--output") + 1]) == gpu_run.ROOT / "comparisons" / "RESULTS-cuda.md"
    assert "REFMASK_TEST_DEVICE" not in seen[3][1]


def test_a_stage_that_runs_over_is_stopped(tmp_path):
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    outcome = gpu_run.run_subprocess(sleeper, gpu_run.stage_env(False), tmp_path / "log", 0.3)
    assert outcome.rc is None and outcome.seconds < 30


def test_kernel_inputs_round_pad_and_fill():
    case = CASES["float16-fills-upcast"]  # float32, its additive mask built in float16
    x = _inputs.kernel_inputs(case, half_only=True)
    assert x.dtype == "float16" and x.q.shape[-1] == 16 and x.head_dim == 4 and x.scale == 0.5
    assert x.rounded is not None and np.array_equal(x.rounded[0], case.q.astype(np.float16))
    assert np.array_equal(x.q[..., :4], x.rounded[0]) and not x.q[..., 4:].any() and x.q.dtype == np.float16
    assert np.array_equal(x.unpad(x.v), x.rounded[2])
    kept = _inputs.kernel_inputs(case, half_only=False)
    assert kept.dtype == "float32" and kept.rounded is None and np.array_equal(kept.k[..., :4], case.k)
    bias = _inputs.additive_mask(case, "float32")
    assert bias.dtype == np.float32 and set(np.unique(bias)) == {0.0, -65504.0}
    assert np.array_equal(bias == 0, np.broadcast_to(case.mask, bias.shape))
    with pytest.raises(Exception, match="the gradients case is float32"):
        _inputs.kernel_inputs(CASES["gradients"], half_only=True)


def test_a_refused_kernel_is_reported_with_torchs_reason_for_that_kernel():
    _needs("torch")
    from comparisons.gpu.torch_cuda_paths import _refusal

    # What SDPA warns on CUDA before "No available kernel": a heading, then the reasons, for each kernel.
    warned = ["Memory efficient kernel not used because:", "Memory Efficient attention has been runtime disabled.",
              "Flash attention kernel not used because: (Triggered internally at sdp_utils.cpp:9.)",
              "Flash attention does not support non-null attn_mask. (Triggered internally at sdp_utils.h:261.)",
              "CuDNN attention kernel not used because:", "cuDNN attention has been runtime disabled."]
    flash = _refusal("flash", warned, RuntimeError("No available kernel"))
    assert flash == "Flash attention does not support non-null attn_mask."
    assert _refusal("cudnn", warned, RuntimeError("x")) == "cuDNN attention has been runtime disabled."
    assert _refusal("efficient", [], RuntimeError("No viable backend\nmore")) == "No viable backend"


@pytest.fixture
def cpu_as_gpu(monkeypatch):
    """The adapters on the CPU: torch's and jax's CPU devices as theirs, flex eager, jax's xla implementation."""
    _needs("torch", "jax")
    import jax
    import torch

    from comparisons.gpu import flex_cuda_paths, jax_gpu_paths

    monkeypatch.setattr(gpu_device, "torch_cuda_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(gpu_device, "jax_gpu_device", lambda: jax.devices("cpu")[0])
    monkeypatch.setattr(flex_cuda_paths, "compile_flex", lambda fn: fn)
    monkeypatch.setattr(jax_gpu_paths, "IMPLEMENTATION", "xla")


def _path(path_id: str):
    from comparisons.gpu.matrix import load_gpu_paths

    return next(p for p in load_gpu_paths()[0] if p.id == path_id)


# Each agrees with the oracle on the CPU (the policies and alignment it agrees with).
AGREEING = [
    ("torch-cuda.refmask", "gradients", ["zero"], ""),
    ("torch-cuda.refmask", "sinks", ["zero", "uniform", "nan"], ""),
    ("torch-cuda.sdpa-math-bool", "causal-rectangular", ["zero", "uniform", "nan"], "bottom_right"),
    ("torch-cuda.sdpa-math-bool", "gradients", ["zero"], ""),
    ("torch-cuda.sdpa-math-is_causal", "causal-rectangular", ["zero", "uniform", "nan"], "top_left"),
    ("torch-cuda.sdpa-math-additive", "padding-left", ["zero", "uniform", "nan"], ""),
    ("torch-cuda.sdpa-flash-bool", "segment", ["zero", "uniform", "nan"], ""),  # float32 run in float16
    ("torch-cuda.flex_attention-compiled", "decode-offset", ["zero", "uniform", "nan"], ""),
    ("torch-cuda.flex_attention-compiled", "softcap", ["zero", "uniform", "nan"], ""),
    ("torch-cuda.flex_attention-compiled", "prefix-lm", ["zero", "uniform", "nan"], ""),
    ("torch-cuda.flex_attention-compiled", "alibi", ["zero", "uniform", "nan"], ""),
    ("torch-cuda.refmask", "alibi", ["zero", "uniform", "nan"], ""),
    ("jax-gpu.refmask", "gradients", ["zero"], ""),
    ("jax-gpu.refmask", "alibi", ["zero", "uniform", "nan"], ""),
    ("jax-gpu.dpa-cudnn-structure", "causal-window", ["zero", "uniform", "nan"], ""),
]


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("path_id, case_id, policies, alignment", AGREEING, ids=[f"{p}-{c}" for p, c, _, _ in AGREEING])
def test_the_cuda_adapters_state_the_cases_on_the_cpu(cpu_as_gpu, path_id, case_id, policies, alignment):
    with np.errstate(all="ignore"):
        cell = evaluate(_path(path_id), CASES[case_id])
    assert (cell.status, cell.policies, cell.alignment) == ("agrees", policies, alignment), cell.reason


def test_what_a_cuda_adapter_cannot_state_it_says_why(cpu_as_gpu):
    cells = {(p, c): evaluate(_path(p), CASES[c]) for p, c in [
        ("torch-cuda.sdpa-efficient-bool", "causal-square"),  # no memory-efficient kernel on the CPU
        ("torch-cuda.sdpa-flash-is_causal", "padding-left"),
        ("jax-gpu.dpa-cudnn-structure", "sliding-window"),
    ]}
    reasons = [(cell.status, cell.reason) for cell in cells.values()]
    assert reasons[0][0] == "not expressible" and reasons[0][1].startswith("SDPA's efficient kernel refuses the call: ")
    assert reasons[1:] == [("not expressible", "is_causal states a top-left causal mask only"),
                           ("not expressible", "cuDNN takes a left window only: jax refuses a right window without "
                                               "is_causal")]


def test_the_timings_run_on_the_cpu_and_report_a_refusing_kernel(monkeypatch):
    _needs("torch")
    import torch

    from comparisons.gpu import bench

    monkeypatch.setattr(gpu_device, "torch_cuda_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(gpu_device, "jax_gpu_device", lambda: None)
    rows = bench.measure(1, shape=(1, 1, 8, 8, 8))
    timed = {(r.case, r.backend, r.reference.split(",")[0]): r for r in rows}
    assert timed[(1, "torch", "SDPA flash kernel")].ratio is not None
    assert "No viable backend" in timed[(1, "torch", "SDPA cuDNN kernel")].skipped
    assert {r.skipped for r in rows if r.backend == "jax"} == {gpu_device.NO_CUDA}
    table = bench.markdown(rows, gpu_device.describe(), 1, (1, 1, 8, 8, 8))
    assert table.count("\n| causal (is_causal=True) | torch |") == 3 and "(1, 1, 8, 8, 8)" in table


def test_the_device_switch_of_the_test_harness(monkeypatch):
    _needs("torch", "jax")
    import jax
    import torch

    from harness import jax_variants, torch_variants

    for value, torch_device, jax_device in [("", None, None), ("cpu", torch.device("cpu"), jax.devices("cpu")[0])]:
        monkeypatch.setenv("REFMASK_TEST_DEVICE", value)
        assert torch_variants.device_from_env() == torch_device and jax_variants.device_from_env() == jax_device
    monkeypatch.setenv("REFMASK_TEST_DEVICE", "gpu")
    for module in (torch_variants, jax_variants):
        with pytest.raises(ValueError, match="REFMASK_TEST_DEVICE must be cpu, cuda or cuda:N; got 'gpu'"):
            module.device_from_env()
