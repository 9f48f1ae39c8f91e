"""Shared helpers of the benchmarks: timing, peak memory, peak FLOP rate, FLOP counts.

Every figure a section reports is measured in the same process run as its baseline, so the
ratios hold even when the absolute numbers move with the machine's load.
"""

from __future__ import annotations

import copy
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

#: Kernels whose time counts as "convolution" in the profiles (oneDNN, native, transposed).
CONV_KERNELS = (
    "aten::mkldnn_convolution", "aten::slow_conv3d_forward", "aten::slow_conv_dilated3d",
    "aten::thnn_conv2d", "aten::_slow_conv2d_forward", "aten::slow_conv_transpose3d",
    "aten::slow_conv_transpose2d", "aten::_nnpack_spatial_convolution",
    "aten::mkldnn_convolution_transpose", "aten::convolution_backward", "aten::_convolution",
)

#: Coarse op families for "where the time goes" summaries.
OP_FAMILIES = {
    "convolution": ("conv",),
    "norm": ("norm",),
    "elementwise": ("relu", "add", "mul", "div", "sub", "exp", "softmax", "sigmoid", "leaky"),
    "copy_cat_pad": ("copy", "cat", "pad", "clone", "contiguous", "fill", "zero"),
    "pool_upsample": ("pool", "upsample", "interp"),
    "matmul": ("mm", "matmul", "bmm", "addmm"),
    "optimizer": ("adam", "foreach", "lerp", "sqrt", "addcdiv", "addcmul"),
}


def time_calls(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> dict[str, float]:
    """Wall-clock seconds of ``fn()``: best and median of ``repeats`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"best_s": min(times), "median_s": statistics.median(times), "runs": len(times)}


def _read_status_kb(field: str, pid: int | str = "self") -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def rss_mb() -> float:
    """This process's resident memory now, MB (0 where /proc is missing)."""
    kb = _read_status_kb("VmRSS")
    return (kb or 0) / 1024.0


class PeakMemory:
    """Peak resident memory of this process inside a ``with`` block, MB.

    Resets the kernel's high-water mark (``/proc/self/clear_refs`` ``5``) at entry and reads
    ``VmHWM`` at exit; where that is not allowed, a thread samples ``VmRSS`` every 5 ms.
    ``peak_mb`` is the process peak, ``delta_mb`` the peak above the RSS at entry (what the
    block itself added).
    """

    def __init__(self) -> None:
        self.start_mb = 0.0
        self.peak_mb = 0.0
        self._sampled = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._hwm = False

    @property
    def delta_mb(self) -> float:
        return max(0.0, self.peak_mb - self.start_mb)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._sampled = max(self._sampled, rss_mb())

    def __enter__(self) -> PeakMemory:
        import gc

        gc.collect()
        self.start_mb = rss_mb()
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
                fh.write("5")
            self._hwm = _read_status_kb("VmHWM") is not None
        except OSError:
            self._hwm = False
        if not self._hwm:
            self._sampled = self.start_mb
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._hwm:
            self.peak_mb = (_read_status_kb("VmHWM") or 0) / 1024.0
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak_mb = max(self._sampled, rss_mb())


#: Runs ``python ARGS...`` (a script path or ``-m module``) and, at exit, writes the process's
#: own ``VmHWM`` (kB) to the file named by the first argument. ``ru_maxrss`` from ``wait4``
#: cannot serve: Linux keeps the high-water mark across ``execve``, so a child started
#: from a parent holding torch reports the parent's RSS when that is larger.
_PEAK_WRAPPER = """
import atexit, runpy, sys
_out, _args = sys.argv[1], sys.argv[2:]
def _write_peak():
    with open("/proc/self/status") as status:
        kb = next(line.split()[1] for line in status if line.startswith("VmHWM"))
    with open(_out, "w") as fh:
        fh.write(kb)
atexit.register(_write_peak)
if _args[0] == "-m":
    sys.argv = [_args[1], *_args[2:]]
    runpy.run_module(_args[1], run_name="__main__", alter_sys=True)
else:
    sys.argv = list(_args)
    runpy.run_path(_args[0], run_name="__main__")
"""


def run_command(cmd: Sequence[str], env: dict[str, str] | None = None,
                timeout_s: float = 3600.0) -> dict[str, Any]:
    """Run ``cmd`` as a child process: wall seconds, its own peak RSS (MB), exit code, output tail.

    A Python command (``cmd[0]`` is this interpreter, then ``-m module`` or a script) runs
    under a small wrapper that
    records the child's own ``VmHWM`` at exit (see ``_PEAK_WRAPPER``); for anything else
    the peak is ``ru_maxrss`` from ``os.wait4``, which may include the parent's RSS at the
    time of the fork.
    """
    import subprocess
    import sys
    import tempfile

    cmd = list(cmd)
    with tempfile.TemporaryDirectory(prefix="bench-cmd-") as tmp:
        peak_file = os.path.join(tmp, "peak_kb")
        wrapped = (cmd[0] == sys.executable and len(cmd) > 1 and os.path.exists("/proc/self/status")
                   and (cmd[1] == "-m" or os.path.isfile(cmd[1])))
        if wrapped:
            cmd = [cmd[0], "-c", _PEAK_WRAPPER, peak_file, *cmd[1:]]
        with tempfile.TemporaryFile() as out:
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
            deadline = start + timeout_s
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.perf_counter() > deadline:
                    proc.kill()
                    pid, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.01)
            seconds = time.perf_counter() - start
            proc.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            tail = out.read().decode("utf-8", "replace")[-3000:]
        peak_mb = usage.ru_maxrss / 1024.0
        if wrapped and os.path.exists(peak_file):
            with open(peak_file) as fh:
                peak_mb = int(fh.read().strip()) / 1024.0
    return {"seconds": seconds, "peak_rss_mb": peak_mb, "peak_source": "VmHWM" if wrapped else "ru_maxrss",
            "returncode": proc.returncode, "output_tail": tail}


def peak_gflops(dtype: str = "fp32", n: int = 2048, seconds: float = 1.0) -> float:
    """Measured peak: GFLOP/s of an ``n x n`` matmul (oneDNN/MKL), best over ~``seconds``.

    Args:
        dtype: ``fp32`` or ``bf16``.
    """
    import torch

    dt = torch.float32 if dtype == "fp32" else torch.bfloat16
    a = torch.randn(n, n).to(dt)
    b = torch.randn(n, n).to(dt)
    torch.mm(a, b)
    best = float("inf")
    end = time.perf_counter() + seconds
    runs = 0
    while runs < 3 or time.perf_counter() < end:
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
        runs += 1
        if runs >= 50:
            break
    return 2.0 * n**3 / best / 1e9


def conv_flops(model: Any, input_shape: Sequence[int]) -> float:
    """Convolution (and transposed convolution) FLOPs of one forward of ``input_shape``.

    Counted on a copy of the model on the ``meta`` device (no compute), 2 FLOPs per
    multiply-add, as :class:`torch.utils.flop_counter.FlopCounterMode` counts them.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(model).to("meta").eval()
    x = torch.empty(*input_shape, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta(x)
    total = 0
    for op, flops in counter.get_flop_counts().get("Global", {}).items():
        if "conv" in str(op):
            total += flops
    return float(total)


def profile_ops(fn: Callable[[], Any], top: int = 10) -> dict[str, Any]:
    """Self CPU time of one call of ``fn`` by op family and the ``top`` ops (torch.profiler).

    Returns:
        ``{"total_s", "conv_s", "families": {family: fraction}, "top": [[op, seconds, calls]]}``.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    rows = [(e.key, e.self_cpu_time_total / 1e6, e.count) for e in prof.key_averages()]
    total = sum(r[1] for r in rows) or 1e-12
    families: dict[str, float] = dict.fromkeys(OP_FAMILIES, 0.0)
    families["other"] = 0.0
    conv = 0.0
    for name, sec, _ in rows:
        low = name.lower()
        if name in CONV_KERNELS or "conv" in low:
            conv += sec
        for fam, words in OP_FAMILIES.items():
            if any(w in low for w in words):
                families[fam] += sec
                break
        else:
            families["other"] += sec
    rows.sort(key=lambda r: -r[1])
    return {
        "total_s": round(total, 4),
        "conv_s": round(conv, 4),
        "families": {k: round(v / total, 3) for k, v in families.items() if v > 0},
        "top": [[name, round(sec, 4), count] for name, sec, count in rows[:top]],
    }


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (empty where unavailable)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def rounded(d: dict[str, Any], digits: int = 4) -> dict[str, Any]:
    """``d`` with its floats rounded (for a readable JSON)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, float):
            out[k] = round(v, digits)
        elif isinstance(v, dict):
            out[k] = rounded(v, digits)
        else:
            out[k] = v
    return out
