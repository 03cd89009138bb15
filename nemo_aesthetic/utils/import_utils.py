"""``nemo_curator.utils.import_utils`` under its legacy path: optional imports that give a
placeholder instead of failing, so code (and NeMo Curator's own tests) importing GPU-only
libraries loads on a machine without them and fails only where the library is used."""
from __future__ import annotations

import importlib

__all__ = ["UnavailableError", "gpu_only_import", "gpu_only_import_from", "image_only_import_from",
           "is_unavailable", "safe_import", "safe_import_from"]


class UnavailableError(ImportError):
    """A placeholder for a library that could not be imported was used."""


class _Unavailable:
    """Stands for a module or name that could not be imported; any use raises UnavailableError."""

    def __init__(self, what: str, reason: str):
        object.__setattr__(self, "_message", f"{what} is not available: {reason}")

    def __getattr__(self, name):
        raise UnavailableError(self._message)

    def __call__(self, *args, **kwargs):
        raise UnavailableError(self._message)

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"<unavailable: {self._message}>"


def is_unavailable(obj: object) -> bool:
    return isinstance(obj, _Unavailable)


def safe_import(module: str, *, msg: str | None = None, alt: object | None = None) -> object:
    """The module, or ``alt``, or a placeholder that raises when used."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        return alt if alt is not None else _Unavailable(module, msg or str(exc))


def safe_import_from(module: str, symbol: str, *, msg: str | None = None, alt: object | None = None) -> object:
    """``module.symbol``, or ``alt``, or a placeholder that raises when used."""
    imported = safe_import(module, msg=msg)
    if is_unavailable(imported):
        return alt if alt is not None else imported
    try:
        return getattr(imported, symbol)
    except AttributeError as exc:
        return alt if alt is not None else _Unavailable(f"{module}.{symbol}", msg or str(exc))


def gpu_only_import(module: str, *, alt: object | None = None) -> object:
    return safe_import(module, msg=f"{module} needs a GPU installation (pip install 'nemo_aesthetic[gpu]')",
                       alt=alt)


def gpu_only_import_from(module: str, symbol: str, *, alt: object | None = None) -> object:
    return safe_import_from(module, symbol, alt=alt)


def image_only_import_from(module: str, symbol: str, *, alt: object | None = None) -> object:
    return safe_import_from(module, symbol, alt=alt)
