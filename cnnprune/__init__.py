"""cnnprune: measure whether pruning a CNN really makes it faster, smaller and lighter."""

__version__ = "0.1.0"
