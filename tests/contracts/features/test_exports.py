"""The package re-exports exactly its ``__all__`` (style.md §2.6)."""

from __future__ import annotations

import importlib

import contracts.features as features

_MODULES = ("_aggregate", "_policy", "_tiles", "_windows")


def test_all_is_exactly_the_public_names() -> None:
    public = {name for name in vars(features) if not name.startswith("_")}
    public -= {"annotations"}  # from __future__ import annotations
    assert set(features.__all__) == public
    assert len(features.__all__) == len(set(features.__all__))


def test_each_private_module_export_is_reexported_once() -> None:
    seen: dict[str, str] = {}
    for mod_name in _MODULES:
        module = importlib.import_module(f"contracts.features.{mod_name}")
        for name in module.__all__:
            assert name not in seen, f"{name} exported by both {seen[name]} and {mod_name}"
            seen[name] = mod_name
            assert getattr(features, name) is getattr(module, name)
    assert set(seen) == set(features.__all__)
