"""Labeling: which images to label next (:mod:`~classify.labeling.suggest`, with the strategies of
:mod:`~classify.labeling.selection`) and which given labels look wrong (:mod:`~classify.labeling.audit`)."""

#: how ``suggest`` chooses images (see :mod:`~classify.labeling.suggest`); here, where the command line reads it
#: without loading scikit-learn
STRATEGIES = ("diverse", "margin", "typiclust", "random")

#: what ``suggest``'s score measures under each strategy (its CSV, page and --help say it); the suggestions are ranked
#: by it, rank 1 the highest
SCORES = {
    "diverse": "how undecided the method is, 1 − (p1 − p2) (p1, p2: its two highest class probabilities; 1: it "
               "cannot tell the two apart, 0: it is sure), times 0.5 to 1 by how central the image is in its group "
               "of undecided images",
    "margin": "how undecided the method is, 1 − (p1 − p2) (p1, p2: its two highest class probabilities; 1: it cannot "
              "tell the two apart, 0: it is sure)",
    "typiclust": "typicality: how densely other images surround this one (the inverse mean distance to its 20 "
                 "nearest neighbours), relative to the most typical candidate (1)",
    "random": "none (0): a random draw, the baseline",
}
