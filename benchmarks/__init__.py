"""Speed and memory benchmarks: medresunet against a plain MONAI baseline, in one process.

Each ``bench_<section>.py`` module has ``run(quick: bool) -> dict`` returning its figures,
with ``speedup_vs_monai`` (or ``speedup_vs_fp32_baseline``) as the headline ratio.
"""
