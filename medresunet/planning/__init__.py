"""Self-configuring training: a dataset fingerprint and a compute target -> a planned config.

Pure functions (no IO): :mod:`medresunet.training.autoplan` measures the dataset and
probes the device, then hands the figures to :func:`choose` and :func:`make_plan`.
"""

from __future__ import annotations

from medresunet.planning.planner import (
    Candidate,
    DatasetFingerprint,
    Plan,
    Target,
    candidates,
    choose,
    enough_steps,
    expected_steps,
    make_plan,
    plan_yaml,
)
from medresunet.planning.topology import Topology, topology_for

__all__ = ["Candidate", "DatasetFingerprint", "Plan", "Target", "Topology", "candidates", "choose",
           "enough_steps", "expected_steps", "make_plan", "plan_yaml", "topology_for"]
