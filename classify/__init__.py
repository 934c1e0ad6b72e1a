"""Light classifiers on cached features: every method is an sklearn estimator, registered by name.

The registry (:mod:`classify.methods.registry`) is a leaf that imports no method; the methods register themselves when
:mod:`classify.methods` is imported, which importing this package does.
"""
from classify.methods.registry import available, create, get, register_method

import classify.methods  # noqa: E402,F401,I001  (registers every built-in method)

__all__ = ["available", "create", "get", "register_method"]
