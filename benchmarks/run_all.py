"""Run the benchmark scripts that work in this environment, at modest sizes, and write their
Markdown results under ``benchmarks/results/`` (or ``--out``).

    python benchmarks/run_all.py                 # CPU, modest sizes (about 40 minutes on 2 cores, 25 of them adv)
    python benchmarks/run_all.py --quick         # smaller sizes (about 15 minutes)
    python benchmarks/run_all.py --only qp,overhead
    python benchmarks/run_all.py --device cuda   # sizes for a GPU (see gpu_check.sh)

``bench_reference.py`` needs PyGRANSO (numpy < 2): it runs with this interpreter when PyGRANSO
imports here, else with ``.venv-ref/bin/python`` when that exists, else it is skipped. Every script
runs as a subprocess; one failing does not stop the others. A summary with each command, its exit
code and duration goes to ``results/run_all_<device>.md``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from common import env_header_md  # noqa: E402


def _has_pygranso(python: str) -> bool:
    code = "from ncvx_core.testing import reference; import sys; sys.exit(0 if reference.available() else 1)"
    try:
        return subprocess.run([python, "-c", code], cwd=ROOT, capture_output=True, timeout=120).returncode == 0
    except Exception:
        return False


def plans(device: str, quick: bool) -> dict[str, list[str]]:
    if device.startswith("cuda"):
        return {
            "qp": ["--steer-B", "1024", "--term-B", "256", "--loop-max", "16", "--loop-seconds", "4"],
            "overhead": ["--batches", "1,8,64,256,1024", "--cnn-batches", "1,8,64,128,256,512",
                         "--cnn-full-batches", "1,8,64", "--budget", "240"],
            "scaling": ["--b-sweep", "1,4,16,64,256,1024,4096", "--full-sweep", "1,4,16,64,256",
                        "--n-sweep", "64,1024,3072,12288,150528", "--budget", "300"],
            "reference": ["--batches", "32,64,256", "--ref-max", "32", "--loop-max", "16"],
            "linesearch": ["--workloads", "mlp-attack,cnn-attack", "--batch", "1024"],
            "host_sync": [],
        }
    if quick:
        return {
            "qp": ["--steer-B", "64", "--term-B", "16", "--term-m", "10,50,100", "--loop-seconds", "3", "--repeat", "2"],
            "overhead": ["--batches", "1,8,64", "--cnn-batches", "1,8,32", "--cnn-full-batches", "1", "--budget", "120"],
            "scaling": ["--b-sweep", "1,4,16,64", "--full-sweep", "1,4,16", "--n-sweep", "64,1024,3072,12288",
                        "--budget", "120"],
            "reference": ["--batches", "16", "--maxit", "50", "--small-batch", "4", "--loop-max", "8",
                          "--cnn-batches", "4", "--cnn-ref-max", "2", "--cnn-maxit", "10"],
            "adv": ["--quick"],
            "linesearch": ["--batch", "32", "--adv-images", "10", "--repeats", "1"],
            "host_sync": ["--maxit", "10"],
        }
    return {
        "qp": ["--loop-seconds", "6"],
        "overhead": ["--batches", "1,8,64,256,512", "--cnn-batches", "1,8,64,128", "--cnn-full-batches", "1,4,16",
                     "--budget", "300"],
        "scaling": ["--b-sweep", "1,4,16,64,256", "--full-sweep", "1,4,16,64", "--n-sweep", "64,1024,3072,12288,150528",
                    "--budget", "420"],
        "reference": ["--batches", "32,64,256", "--ref-max", "32", "--loop-max", "32"],
        "adv": [],
        "linesearch": [],
        "host_sync": [],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="qp,overhead,scaling,reference,adv,linesearch,host_sync",
                    help="comma-separated subset of qp, overhead, scaling, reference, adv, linesearch, host_sync (run "
                         "in this order; adv is CPU only)")
    ap.add_argument("--out", default=None, help="results directory (default benchmarks/results, or $OUT)")
    ap.add_argument("--ref-python", default=None, help="interpreter for bench_reference.py (default: auto)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per script")
    ap.add_argument("--threads", default=None, help="forwarded to every script")
    ap.add_argument("--dtype", default=None, choices=["float64", "float32"], help="forwarded to every script")
    args = ap.parse_args()
    extra = (["--threads", args.threads] if args.threads else []) + (["--dtype", args.dtype] if args.dtype else [])
    out_dir = Path(args.out or os.environ.get("OUT") or HERE / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = plans(args.device, args.quick)
    todo = [s for s in args.only.split(",") if s]
    summary = []
    t_all = time.perf_counter()
    for name in todo:
        if name not in plan:
            if name == "adv":
                print("[adv] bench_adv.py runs on the CPU only: skipped")
                summary.append((name, "-", "skipped (CPU only)", 0.0))
                continue
            print(f"unknown benchmark {name!r}; valid: {', '.join(plan)}")
            continue
        python = sys.executable
        if name == "reference":
            if args.ref_python:
                python = args.ref_python
            elif not _has_pygranso(python):
                ref = ROOT / ".venv-ref" / "bin" / "python"
                if ref.exists() and _has_pygranso(str(ref)):
                    python = str(ref)
                else:
                    print("[reference] PyGRANSO is not available (here or in .venv-ref): skipped")
                    summary.append((name, "-", "skipped (no PyGRANSO)", 0.0))
                    continue
        cmd = [python, str(HERE / f"bench_{name}.py"), "--device", args.device, "--out", str(out_dir), *plan[name], *extra]
        shown = shlex.join([os.path.relpath(c, ROOT) if c.startswith(str(ROOT)) else c for c in cmd])
        print(f"\n=== {shown}", flush=True)
        t0 = time.perf_counter()
        try:
            rc = subprocess.run(cmd, cwd=ROOT, timeout=args.timeout).returncode
            status = "ok" if rc == 0 else f"exit code {rc}"
        except subprocess.TimeoutExpired:
            status = f"timeout after {args.timeout:.0f} s"
        dt = time.perf_counter() - t0
        summary.append((name, shown, status, dt))
        print(f"=== {name}: {status} in {dt:.0f} s", flush=True)
    import torch

    lines = ["# run_all summary\n", env_header_md(torch.device("cpu") if not args.device.startswith("cuda") else torch.device(args.device)),
             "\n| script | command | status | seconds |", "|---|---|---|---|"]
    lines += [f"| {n} | `{c}` | {s} | {d:.0f} |" for n, c, s, d in summary]
    lines.append(f"\nTotal: {time.perf_counter() - t_all:.0f} s.\n")
    dev = "cuda" if args.device.startswith("cuda") else "cpu"
    (out_dir / f"run_all_{dev}.md").write_text("\n".join(lines))
    print(f"\nwrote {out_dir / f'run_all_{dev}.md'}")
    return 0 if all(s in ("ok",) or s.startswith("skipped") for _, _, s, _ in summary) else 1


if __name__ == "__main__":
    raise SystemExit(main())
