"""The feature plane's pieces for the actor tree (filled in by the feature-plane work)."""

from __future__ import annotations

from typing import Any

from runtime.settings import Settings


def build_feature_plane(settings: Settings) -> Any:
    return None
