"""Labeling: which images to label next (:mod:`~classify.labeling.suggest`, with the strategies of
:mod:`~classify.labeling.selection`) and which given labels look wrong (:mod:`~classify.labeling.audit`)."""
