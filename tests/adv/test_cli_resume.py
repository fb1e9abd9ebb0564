"""Interruption and resume of ``python -m adv evaluate``, and sharding under torchrun.

* A run killed with SIGKILL after its first batch, then resumed, ends with records identical to
  an uninterrupted run's (timings aside), keeps the finished batches' lines byte for byte (so they
  were not recomputed) and holds every index once; a truncated last line is tolerated.
* Ctrl-C (SIGINT) leaves a valid partial report and exit code 130.
* Two torchrun processes (gloo, CPU) write the records of one process, and resume an interrupted
  run per shard.

All runs use one torch thread per process (CPU kernels may round differently with another thread
count), the tiny linear model of cli_models.py and small iteration budgets.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import adv.cli as cli

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import cli_models  # noqa: E402

N, BS = 21, 3  # 7 batches, the last one full
TORCHRUN = Path(sys.executable).parent / "torchrun"


def _args(data: Path, out: Path) -> list[str]:
    return ["evaluate", "--model", f"{HERE / 'cli_models.py'}:tiny_linear", "--data", str(data), "--threat", "l2",
            "--eps", "0.4", "--attacks", "apgd-ce,pwcf-margin", "--min-distortion", "--num-samples", str(N),
            "--batch-size", str(BS), "--seed", "3", "--restarts", "1", "--maxit", "20", "--restart-maxit", "20",
            "--min-restarts", "1", "--min-maxit", "30", "--apgd-iter", "10", "--examples", "2", "--threads", "1",
            "--out", str(out)]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


def _lines(out: Path, name: str = "records.jsonl") -> list[str]:
    p = out / name
    return [line for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def _strip_time(lines: list[str]) -> list[dict]:
    out = []
    for line in lines:
        r = json.loads(line)
        r.pop("seconds")
        out.append(r)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    x, y = cli_models.make_data(N)
    np.savez(d / "data.npz", x=x, y=y)
    return d / "data.npz"


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """An uninterrupted single-process run."""
    out = tmp_path_factory.mktemp("ref") / "rep"
    assert cli.main([*_args(data, out), "--quiet"]) == 0
    assert len(_lines(out)) == N
    return out


def _default_sigint() -> None:
    # a test session started in the background of a non-interactive shell inherits an ignored
    # SIGINT, and Python then installs no KeyboardInterrupt handler: give the child the default
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "adv", *args], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)


def _wait_for_records(proc: subprocess.Popen, out: Path, at_least: int, timeout: float = 120.0) -> None:
    t = time.monotonic()
    while len(_lines(out)) < at_least:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before writing {at_least} records: {proc.stderr.read()}")
        if time.monotonic() - t > timeout:
            proc.kill()
            raise AssertionError("no records in time")
        time.sleep(0.01)


def test_sigkill_then_resume_gives_the_uninterrupted_records(data, reference, tmp_path):
    out = tmp_path / "rep"
    proc = _start([*_args(data, out), "--quiet"])
    _wait_for_records(proc, out, BS)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    proc.stderr.close()
    killed = _lines(out)
    assert BS <= len(killed) < N, "the run should have been killed mid-way"
    with open(out / "records.jsonl", "a") as fh:  # as if killed in the middle of a write
        fh.write('{"index": 20, "batch": 6, "label": 1, "pr')
    finished = killed[: (len(killed) // BS) * BS]  # the complete batches

    assert cli.main([*_args(data, out), "--resume", "--quiet"]) == 0
    final = _lines(out)
    assert [json.loads(line)["index"] for line in final] == list(range(N))  # each sample once, in order
    assert final[: len(finished)] == finished  # finished batches kept byte for byte: not recomputed
    assert _strip_time(final) == _strip_time(_lines(reference))
    assert json.loads((out / "summary.json").read_text())["complete"]


def test_ctrl_c_writes_a_partial_report_and_exits_130(data, reference, tmp_path):
    out = tmp_path / "rep"
    proc = _start(_args(data, out))  # with the progress bar
    _wait_for_records(proc, out, BS)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted: partial report" in err and "--resume" in err
    assert "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    n_done = summary["samples"]
    assert summary["partial"] and 0 < n_done < N and n_done % BS == 0
    assert f"Status: **partial**, {n_done} of {N} samples" in (out / "summary.md").read_text()
    assert (out / "robust_accuracy_vs_eps.png").is_file()
    assert cli.main([*_args(data, out), "--resume", "--quiet"]) == 0
    assert _strip_time(_lines(out)) == _strip_time(_lines(reference))
    assert (out / "summary.md").read_text().count("Status: **complete**") == 1


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    if not TORCHRUN.exists():
        pytest.skip("torchrun is not installed next to the interpreter")
    return subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "adv", *args, "--quiet"],
                          env=_env(), capture_output=True, text=True, timeout=300)


def test_torchrun_two_processes_match_one_process_and_resume_per_shard(data, reference, tmp_path):
    out = tmp_path / "ddp"
    res = _torchrun(_args(data, out))
    assert res.returncode == 0, res.stderr[-3000:]
    assert not list(out.glob("records.rank*"))  # merged by rank 0
    assert _strip_time(_lines(out)) == _strip_time(_lines(reference))
    assert json.loads((out / "settings.json").read_text())["world_size"] == 2
    ref_summary = json.loads((reference / "summary.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    for key in ("clean", "robust_accuracy", "min_distortion", "attack_distance", "sparsity"):
        assert summary[key] == ref_summary[key], key

    # an interrupted run (3 finished batches, one in a rank file, a partial batch in another) resumed by 2 processes
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(reference / "settings.json", part / "settings.json")
    ref_lines = _lines(reference)
    (part / "records.jsonl").write_text("\n".join(ref_lines[: 2 * BS]) + "\n")
    (part / "records.rank1.jsonl").write_text(
        "\n".join(ref_lines[4 * BS: 5 * BS]) + "\n" + ref_lines[5 * BS] + "\n" + ref_lines[5 * BS + 1][:30])
    res = _torchrun([*_args(data, part), "--resume"])
    assert res.returncode == 0, res.stderr[-3000:]
    final = _lines(part)
    assert [json.loads(line)["index"] for line in final] == list(range(N))
    assert final[: 2 * BS] == ref_lines[: 2 * BS] and final[4 * BS: 5 * BS] == ref_lines[4 * BS: 5 * BS]
    assert _strip_time(final) == _strip_time(ref_lines)
