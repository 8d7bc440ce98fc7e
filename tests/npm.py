"""Node projects under tests/, installed once (platform_dev.npm); a failed install fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from platform_dev.npm import NpmError, node_missing, npm_ci

__all__ = ["installed", "node_missing"]


def installed(directory: Path) -> Path:
    """`directory` with its locked packages installed (`npm ci`, skipped when up to date)."""
    try:
        return npm_ci(directory)
    except NpmError as exc:
        pytest.fail(str(exc))
