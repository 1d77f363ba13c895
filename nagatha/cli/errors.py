"""Exit codes of the CLI, decided here and nowhere else.

0 ok · 1 task failed, id not found, or a task not cancellable · 2 usage or config error ·
3 a service unreachable · 130 interrupted (Ctrl-C), as shells report it.
"""

from __future__ import annotations

from nagatha.errors import (
    ConfigError,
    InvalidArguments,
    NagathaError,
    ServiceUnavailable,
    TaskNotCancellable,
    TaskNotFound,
    TaskNotRerunnable,
    TaskWaitTimeout,
    UnknownTask,
)

EXIT_OK = 0
EXIT_TASK_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130

#: First matching class wins (most specific first).
EXIT_CODES: tuple[tuple[type[NagathaError], int], ...] = (
    (ConfigError, EXIT_USAGE),
    (UnknownTask, EXIT_USAGE),
    (InvalidArguments, EXIT_USAGE),
    (TaskNotFound, EXIT_TASK_FAILED),
    (TaskNotCancellable, EXIT_TASK_FAILED),
    (TaskNotRerunnable, EXIT_TASK_FAILED),
    (TaskWaitTimeout, EXIT_TASK_FAILED),
    (ServiceUnavailable, EXIT_UNAVAILABLE),
)


def exit_code_for(error: NagathaError) -> int:
    """The exit code for ``error`` (1 for any hub error not listed)."""
    for cls, code in EXIT_CODES:
        if isinstance(error, cls):
            return code
    return EXIT_TASK_FAILED
