"""The desktop window (PySide6). Importing it applies the worker's PySide6 refcount guard,
so every Qt face of the app is protected (see worker.guard_pyside_refcounts)."""

from ..worker import guard_pyside_refcounts

guard_pyside_refcounts()
