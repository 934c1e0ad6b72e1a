"""Light classifiers on cached features: every method is an sklearn estimator, registered by name.

The registry (:mod:`classify.methods.registry`) imports the built-in methods on its first lookup, so importing this
package (and so any command's ``--help``) loads no scikit-learn.
"""
from classify.methods.registry import available, create, get, register_method

__all__ = ["available", "create", "get", "register_method"]
