"""The method framework and the built-in methods, one module each.

Framework: :mod:`~classify.methods.base` (FewShotClassifier, parameter rules), :mod:`~classify.methods.registry`
(``@register_method``, ``create``), and what only methods use: :mod:`~classify.methods.text` (CLIP text priors),
:mod:`~classify.methods.features`, :mod:`~classify.methods.transform`, :mod:`~classify.methods.graph` (faiss kNN
graphs), :mod:`~classify.methods.thresholds` (pseudo-label rules). A method module registers itself when imported;
the registry imports the built-in ones on its first lookup (:func:`load_builtins`).
"""
import importlib

#: the built-in method modules, each registering one method
BUILTIN = ("zeroshot", "linear", "knn", "ensemble", "moe", "labelprop", "selftrain", "tip", "crossmodal", "coop",
           "conse", "fixmatch", "ptmap", "auto")


def load_builtins() -> None:
    """Import every built-in method module, which registers its method."""
    for name in BUILTIN:
        importlib.import_module(f"classify.methods.{name}")
