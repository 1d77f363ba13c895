"""Find plug-in modules on disk and import them in isolation.

A module is a folder with an ``__init__.py`` under one of the configured module paths. It is
imported as ``nagatha_modules.<name>`` so that relative imports inside it work and two paths
can never shadow each other's module of another name. Folders whose name starts with ``_`` or
``.`` are skipped.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nagatha.config import USER_MODULES, load_yaml_file
from nagatha.errors import ConfigError, ModuleLoadError

logger = logging.getLogger("nagatha.registry")

PACKAGE = "nagatha_modules"
NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


@dataclass
class ModuleSource:
    """A module folder found on disk, with its own ``config.yaml`` (empty if absent)."""

    name: str
    path: Path
    config: dict[str, Any] = field(default_factory=dict)


def iter_module_dirs(paths: list[str]) -> Iterator[tuple[str, Path]]:
    """Yield ``(name, folder)`` for each module folder; the first path holding a name wins."""
    seen: dict[str, Path] = {}
    for base in paths:
        root = Path(base).expanduser()
        if not root.is_dir():
            if root != Path(USER_MODULES).expanduser():  # a typo, or modules not installed
                logger.warning("modules path %s is not a folder: nothing loaded from it", root)
            continue
        for folder in sorted(root.iterdir()):
            name = folder.name
            if name.startswith(("_", ".")) or not (folder / "__init__.py").is_file():
                continue
            if name in seen:
                logger.warning(
                    "module folder %s ignored: module %s was found first in %s "
                    "(modules.paths are searched in order)",
                    folder,
                    name,
                    seen[name],
                )
                continue
            seen[name] = folder
            yield name, folder


def read_module_config(folder: Path) -> dict[str, Any]:
    """Read the optional ``config.yaml`` of a module folder (safe loader)."""
    path = folder / "config.yaml"
    if not path.is_file():
        return {}
    try:
        data = load_yaml_file(path, path.name)
    except ConfigError as exc:
        raise ModuleLoadError(str(exc)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ModuleLoadError(f"{path.name} must hold a mapping, not {type(data).__name__}")
    return data


def import_module(name: str, folder: Path) -> types.ModuleType:
    """Import the module in ``folder`` as ``nagatha_modules.<name>``.

    Any exception raised while importing becomes a :class:`ModuleLoadError` naming it.
    """
    if not NAME_PATTERN.fullmatch(name):
        raise ModuleLoadError(
            f"invalid module name {name!r}: use letters, digits and underscores, "
            "starting with a letter"
        )
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE, "Plug-in modules loaded by nagatha.")
        package.__path__ = []
        sys.modules[PACKAGE] = package
    qualified = f"{PACKAGE}.{name}"
    spec = importlib.util.spec_from_file_location(
        qualified, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    if spec is None or spec.loader is None:
        raise ModuleLoadError(f"cannot import {folder}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # sys.exit() in a module must not end the hub
        for key in [k for k in sys.modules if k == qualified or k.startswith(qualified + ".")]:
            del sys.modules[key]
        raise ModuleLoadError(f"import failed: {type(exc).__name__}: {exc}") from exc
    return module


def describe(module: types.ModuleType) -> tuple[str | None, str]:
    """Return ``(version, description)`` from ``__version__`` and the docstring's first line."""
    version = getattr(module, "__version__", None)
    doc = (module.__doc__ or "").strip()
    return (str(version) if version is not None else None), (doc.splitlines()[0] if doc else "")
