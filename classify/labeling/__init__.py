"""Labeling: which images to label next (:mod:`~classify.labeling.suggest`, with the strategies of
:mod:`~classify.labeling.selection`) and which given labels look wrong (:mod:`~classify.labeling.audit`)."""

#: how ``suggest`` chooses images (see :mod:`~classify.labeling.suggest`); here, where the command line reads it
#: without loading scikit-learn
STRATEGIES = ("diverse", "margin", "typiclust", "random")
