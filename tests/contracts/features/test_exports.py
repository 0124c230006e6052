"""The package re-exports exactly its ``__all__``: every public name of its modules, once."""

from __future__ import annotations

import importlib
import types

import ctxplane.contracts.features as features

_MODULES = ("aggregate", "policy", "tiles", "windows")


def test_all_is_exactly_the_public_names() -> None:
    public = {
        name for name, value in vars(features).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)  # its submodules
    }
    public -= {"annotations"}  # from __future__ import annotations
    assert set(features.__all__) == public
    assert len(features.__all__) == len(set(features.__all__))


def test_each_module_export_is_reexported_once() -> None:
    seen: dict[str, str] = {}
    for mod_name in _MODULES:
        module = importlib.import_module(f"ctxplane.contracts.features.{mod_name}")
        for name in module.__all__:
            assert name not in seen, f"{name} exported by both {seen[name]} and {mod_name}"
            seen[name] = mod_name
            assert getattr(features, name) is getattr(module, name)
    assert set(seen) == set(features.__all__)
