"""``pytest bench``: the benchmark matrix of the installed package (``cnnprune/bench``).

Its options, fixtures and hooks live in ``cnnprune.bench.conftest``, so that the pipeline runs the
same matrix from any folder; this file only puts them in front of pytest for a checkout.
"""

from cnnprune.bench.conftest import *  # noqa: F403
