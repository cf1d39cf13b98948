"""Training-set simulator: multislice HRTEM of Pt/CeO2 with abTEM and ASE.

Needs the optional extra: ``pip install "napari-sbd[simulate]"`` (abtem, ase).
"""

from __future__ import annotations

REQUIRES = ("abtem", "ase")


def require_simulation_extra() -> None:
    """Raise ImportError with the install command when abTEM or ASE is missing."""
    import importlib.util

    missing = [m for m in REQUIRES if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(
            f"the simulator needs {', '.join(missing)}: install the extra with "
            '`pip install "napari-sbd[simulate]"`'
        )
