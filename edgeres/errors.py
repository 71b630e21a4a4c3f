"""The errors edgeres raises on purpose, and the exit code each one maps to.

An EdgeresError is a problem the user can fix (a bad recipe, missing data, a missing package, a stage whose result
fails a check): the CLI prints its message without a traceback. Any other exception is a bug in edgeres and keeps
its traceback.
"""

from __future__ import annotations

import errno


class EdgeresError(Exception):
    """A problem the user can fix. The message says what happened, the value seen, what is allowed and the fix.

    `kind` is the prefix the CLI prints (`edgeres: <kind>: <message>`): each class names one kind of problem, so the
    prefix says what was wrong."""

    exit_code = 3
    kind = "error"


class UsageError(EdgeresError):
    """A command or Python API call was given something it cannot use (a missing or existing file, a bad option
    value, a file of the wrong kind); nothing has run. Not about a recipe: that is RecipeError."""

    exit_code = 2
    kind = "usage error"


class RecipeError(EdgeresError):
    """The recipe or the command line is invalid; nothing has run."""

    exit_code = 2
    kind = "recipe error"


class MissingDependencyError(EdgeresError):
    """An optional package that this step needs is not installed."""

    exit_code = 4
    kind = "missing package"


class DataError(EdgeresError):
    """The data set cannot be read or is unusable (missing folder, no images, NaN inputs...)."""

    exit_code = 5
    kind = "data error"


class StageError(EdgeresError):
    """A stage ran and its result failed a check (parity, accuracy budget, Q/DQ rules...)."""

    exit_code = 3
    kind = "stage failed"


class CacheError(EdgeresError):
    """The artifact cache is unusable (locked by another build, corrupt entry, missing input for --from)."""

    exit_code = 6
    kind = "cache error"


class StorageError(EdgeresError):
    """A write failed (disk full, quota, file-size limit, read-only file system): committed artifacts are intact."""

    exit_code = 8
    kind = "write failed"


class RegressionError(EdgeresError):
    """`edgeres compare` found a regression beyond its thresholds."""

    exit_code = 7
    kind = "regression"


# The errno values of a write that failed for want of room or permission (not a bug in edgeres, not bad input).
WRITE_FAILURES = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def write_failure(exc: BaseException) -> OSError | None:
    """The failed write (an OSError with a WRITE_FAILURES errno) behind `exc`, following its causes: libraries that
    wrap I/O errors in their own exceptions (torch's ONNX exporter) still end in StorageError."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in WRITE_FAILURES:
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


class BundleError(EdgeresError):
    """A deploy bundle is refused: unsafe archive, a file that does not match the manifest or the signature, no or
    the wrong signature, an older version than allowed, or built for another target or device."""

    exit_code = 9
    kind = "bundle refused"


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "internal error (a bug in edgeres: the traceback is printed; please report it)",
    2: "bad usage or invalid recipe (nothing ran)",
    3: "a stage failed a check (parity, accuracy budget, rules) or could not run",
    4: "an optional package is missing (the message names the extra to install)",
    5: "the data set cannot be read or is unusable",
    6: "the artifact cache is locked, corrupt or lacks an entry --from needs",
    7: "edgeres compare found a regression beyond its thresholds",
    8: "a write failed (disk full, quota, read-only); committed stages are intact and a re-run resumes",
    9: "a bundle is refused (unsafe archive, changed file, bad or missing signature, rollback, other device)",
    130: "interrupted (Ctrl-C); completed stages stay cached and a re-run resumes",
}
