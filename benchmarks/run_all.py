"""Run every benchmark script in a fresh process and keep its output.

``make bench`` calls this with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset. Each
script prints its own BLAS report (threadpoolctl) and ratios against a baseline
measured in the same process; the outputs go to ``benchmarks/results/<name>.txt``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "bench_nkp.py",
    "bench_sekron.py",
    "bench_tt.py",
    "bench_matmul.py",
    "bench_conv2d.py",
    "bench_fixed.py",
    "bench_torch.py",
    "bench_thread_cap.py",
]


def main() -> int:
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    failed = []
    for name in SCRIPTS:
        script = HERE / name
        if not script.exists():
            continue
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
        text = res.stdout + (("\n[stderr]\n" + res.stderr) if res.returncode else "")
        (out_dir / f"{script.stem}.txt").write_text(text, encoding="utf-8")
        print(text, flush=True)
        print(f"   ({time.perf_counter() - start:.0f} s, exit {res.returncode})", flush=True)
        if res.returncode:
            failed.append(name)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
