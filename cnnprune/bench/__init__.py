"""The benchmark matrix, shipped inside the package so that an installed cnnprune can run it.

``python -m cnnprune.pipeline`` runs ``pytest`` on this folder (with its own ``pytest.ini``);
from a checkout, ``pytest bench --benchmark-autosave`` runs the same tests through ``bench/``.
"""

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
