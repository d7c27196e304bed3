"""The latency tests of ``cnnprune.bench`` (see its ``test_latency`` for what each case times)."""

from cnnprune.bench.test_latency import test_latency, test_latency_2_4  # noqa: F401
