"""Writing a matplotlib figure: atomically, as PNG, and always closing it (pyplot keeps open figures alive)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdeploy import atomic


def save_png(fig: Any, path: Path, dpi: float | None = None) -> Path:
    """Write ``fig`` to ``path`` through a temporary file and close it, also when writing fails."""
    import matplotlib.pyplot as plt

    try:
        atomic.write_with(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        plt.close(fig)
    return path
