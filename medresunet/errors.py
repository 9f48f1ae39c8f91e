"""The project's exceptions.

Every error a user can cause is one of these, with a message that names the file or
case, what was expected and what was found. The console scripts turn them into one
line on stderr and an exit code (2 for usage, config and manifest errors; a failing
case in a batch is reported and the batch exits 1).
"""

from __future__ import annotations


class MedresunetError(Exception):
    """Base class of every error meant for the user (printed without a traceback)."""


class ConfigError(MedresunetError):
    """A YAML config or a ``--set`` override is invalid (exit code 2)."""


class ManifestError(MedresunetError):
    """A dataset manifest, or a file it points to, is invalid (exit code 2)."""


class ScanError(MedresunetError):
    """One scan or label file cannot be read or used; a batch reports it and goes on."""


class CheckpointError(MedresunetError):
    """A checkpoint is missing, truncated, of another format, or refused as unsafe."""


class UsageError(MedresunetError):
    """Command-line arguments that do not fit together (exit code 2)."""


class DistributedError(MedresunetError):
    """A collective operation failed or timed out: another rank died or hangs (exit code 1)."""
