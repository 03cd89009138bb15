"""Say in one line what a script must add before a local cluster starts worker processes.

Dask starts a local cluster's workers with multiprocessing's "spawn" method, and a spawned process
imports the running script again before it can work. A script whose code is not under
``if __name__ == "__main__":`` then starts a cluster inside every new worker while it boots,
Python refuses ("An attempt has been made to start a new process before the current process
has finished its bootstrapping phase") and the cluster fails with hundreds of lines of nanny
tracebacks. :func:`require_main_guard` finds that case before any process starts: the script's
top-level code is on the call stack, at a line that no ``if __name__ == "__main__":`` encloses.

In Jupyter, in ``python -c``, under ``python -m pytest`` or with the "fork" start method nothing
is imported again, and nothing is checked.
"""
from __future__ import annotations

import ast
import functools
import os
import sys


class MissingMainGuard(SystemExit):
    """The running script would be re-imported by the cluster's workers; the message says what to
    add. A SystemExit, so a script stops with that one line instead of a traceback."""


def require_main_guard(start_method: str, what: str = "get_client()") -> None:
    """Raise :class:`MissingMainGuard` if worker processes started now (with ``start_method``)
    would import a script whose calling line is not under ``if __name__ == "__main__":``."""
    where = unguarded_script_line(start_method)
    if where is None:
        return
    path, line = where
    name = os.path.basename(path)
    raise MissingMainGuard(
        f"{name}, line {line}: {what} starts worker processes, and each imports {name} again; put the code "
        f"that runs the job under 'if __name__ == \"__main__\":' (imports and definitions may stay above it), "
        "as Python's multiprocessing requires of scripts. In Jupyter no change is needed.")


def unguarded_script_line(start_method: str) -> tuple[str, int] | None:
    """``(script path, line)`` of the running script's top-level statement that led here, when new
    processes would import that script and the statement is outside a ``__main__`` guard; else None."""
    main = sys.modules.get("__main__")
    if main is None or start_method not in ("spawn", "forkserver") or not _reimported_by_children(main):
        return None
    frame = sys._getframe(1)
    while frame is not None and not (frame.f_code.co_name == "<module>" and frame.f_globals is vars(main)):
        frame = frame.f_back
    if frame is None:
        return None  # called from a thread, a callback, ...: not the script's own top level
    try:
        guarded = _guarded_line_ranges(frame.f_code.co_filename)
    except (OSError, SyntaxError, ValueError):
        return None  # cannot read the source: do not guess
    line = frame.f_lineno
    if any(first <= line <= last for first, last in guarded):
        return None
    return frame.f_code.co_filename, line


def _reimported_by_children(main) -> bool:
    """What ``multiprocessing.spawn`` does with ``__main__`` in a new process: import it again,
    by module name (``python -m pkg.mod``) or by path (``python script.py``), except a package's
    ``__main__`` and an interactive session (no file)."""
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None:
        return name != "__main__" and not name.endswith(".__main__")
    path = getattr(main, "__file__", None)
    return bool(path) and os.path.splitext(os.path.basename(path))[0] != "ipython"


@functools.lru_cache(maxsize=8)
def _guarded_line_ranges(filename: str) -> tuple[tuple[int, int], ...]:
    """The line ranges of the bodies of every ``if __name__ == "__main__":`` in ``filename``."""
    with open(filename, "rb") as f:
        tree = ast.parse(f.read(), filename)
    return tuple((node.body[0].lineno, node.body[-1].end_lineno or node.body[-1].lineno)
                 for node in ast.walk(tree) if isinstance(node, ast.If) and _is_main_test(node.test))


def _is_main_test(test: ast.expr) -> bool:
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s.id for s in sides if isinstance(s, ast.Name)]
    constants = [s.value for s in sides if isinstance(s, ast.Constant)]
    return names == ["__name__"] and constants == ["__main__"]
