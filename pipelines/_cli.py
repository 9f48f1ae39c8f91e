"""Shared command-line plumbing: common flags, logging, and error -> exit code mapping.

Exit codes (DESIGN.md section 4): 0 all done, 1 some cases failed, 2 bad usage, config,
manifest or checkpoint; 1 also when, under torchrun, another rank died (a collective
failed or timed out). A user error prints one line on stderr, no traceback, unless
``--debug`` is given. A write that fails for lack of space or permission (full disk,
read-only output) is one line naming the file and exit code 1.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from collections.abc import Callable, Sequence

from medresunet.errors import DistributedError, MedresunetError, ScanError

EXIT_OK = 0
EXIT_FAILED_CASES = 1
EXIT_USAGE = 2
# errno values of a failed write that the user fixes outside the tool: one line, exit 1
_WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EFBIG}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own exit code is 2 as well
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with the flags every command has."""
    parser = _Parser(prog=prog, description=description)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    parser.add_argument("--debug", action="store_true", help="full tracebacks and debug logging")
    return parser


def parse_label_names(text: str, option: str = "--label-names") -> dict[str, int]:
    """A label map from the command line: ``"background=0,liver=1"`` -> ``{"background": 0, "liver": 1}``.

    The one syntax of every command that takes label names (``medresunet-manifest``,
    ``medresunet-eval``): comma-separated ``NAME=INT`` items, names and values unique,
    values >= 0.

    Raises:
        UsageError: an item without ``=``, an empty name, a non-integer or negative value, or
            a repeated name or value; the message names ``option`` and the item.
    """
    from medresunet.errors import UsageError

    out: dict[str, int] = {}
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise UsageError(f"{option} {text!r}: expected NAME=INT items like background=0,liver=1")
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            if not sep or not name:
                raise ValueError(item)
            number = int(value)
        except ValueError as err:
            raise UsageError(f"{option}: expected NAME=INT items like background=0,liver=1, "
                             f"got {item!r}") from err
        if number < 0 or name in out or number in out.values():
            raise UsageError(f"{option}: {item!r} is negative or repeats a name or value; "
                             "expected unique NAME=INT items like background=0,liver=1")
        out[name] = number
    return out


def setup_logging(quiet: bool = False, debug: bool = False) -> None:
    """Log to stderr: INFO by default, WARNING with ``--quiet``, DEBUG with ``--debug``."""
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)
    for noisy in ("PIL", "matplotlib", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_main(body: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser,
             argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run ``body(args)`` and map the project's errors to exit codes."""
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "quiet", False), getattr(args, "debug", False))
    try:
        return int(body(args))
    except MedresunetError as err:
        if getattr(args, "debug", False):
            raise
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        # a failed scan, or a failed collective (another rank died): 1; the user's input: 2
        return EXIT_FAILED_CASES if isinstance(err, (ScanError, DistributedError)) else EXIT_USAGE
    except OSError as err:  # the machine, not the input: full disk, read-only or missing output folder
        if getattr(args, "debug", False) or err.errno not in _WRITE_ERRNOS:
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(f"{parser.prog}: error: {where}cannot write ({err.strerror or err}); free disk space or "
              "choose a writable --output, then run the command again (finished outputs are kept)",
              file=sys.stderr)
        return EXIT_FAILED_CASES
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130


def report_failures(prog: str, failures: Sequence[tuple[str, str]]) -> None:
    """Print the failed cases of a batch, one ``case: reason`` line each, to stderr."""
    if not failures:
        return
    print(f"{prog}: {len(failures)} case(s) failed:", file=sys.stderr)
    for case, reason in failures:
        print(f"  {case}: {reason}", file=sys.stderr)
