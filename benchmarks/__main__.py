"""``python -m benchmarks [--quick] [--json FILE] [--only SECTION ...]``.

Runs every section in one process so that medresunet and the MONAI baseline are measured
on the same machine state, prints a table of ratios and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
import traceback

SECTIONS = ("sliding_window", "infer_end_to_end", "evaluation", "training", "backends", "quality", "cv")


def _machine() -> dict:
    import os

    import monai
    import torch

    from medresunet.devices import cpu_supports_bf16

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": cpu_supports_bf16(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": sys.version.split()[0],
        "date": time.strftime("%Y-%m-%d"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller inputs, fewer repeats (< 10 min on 2 cores)")
    parser.add_argument("--json", help="write all figures to this JSON file")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--minutes", type=float, help="quality: training budget per side and dataset "
                                                      "(default 15; --quick: 1)")
    parser.add_argument("--keep", metavar="DIR", help="quality: keep the datasets, run folders and predictions "
                                                      "in DIR (default: a temporary folder, removed)")
    args = parser.parse_args(argv)

    results: dict = {"machine": _machine()}
    failed = False
    for section in args.only or SECTIONS:
        start = time.perf_counter()
        print(f"[benchmarks] {section} ...", file=sys.stderr, flush=True)
        try:
            module = importlib.import_module(f"benchmarks.bench_{section}")
            extra = {"minutes": args.minutes, "keep": args.keep} if section == "quality" else {}
            figures = module.run(quick=args.quick, **extra)
        except Exception as err:  # a broken section must not hide the others' figures
            traceback.print_exc()
            figures = {"error": f"{type(err).__name__}: {err}"}
            failed = True
        figures["wall_s"] = round(time.perf_counter() - start, 2)
        results[section] = figures

    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
    print("\nsection              speedup", file=sys.stderr)
    for section in args.only or SECTIONS:
        fig = results[section]
        ratio = fig.get("speedup_vs_monai", fig.get("speedup_vs_fp32_baseline",
                                                    fig.get("speedup_vs_torch", fig.get("error"))))
        print(f"{section:20s} {ratio}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
