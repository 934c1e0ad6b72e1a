"""Light classifiers on cached features: every method is an sklearn estimator, registered by name."""
from classify.registry import available, create, get, register_method

__all__ = ["available", "create", "get", "register_method"]
