"""The browser labeling app behind ``python -m classify label``: a local web page that shows the images ``suggest``
would pick next, saves every answer the moment it is given (an answers CSV beside the store, and the store itself
through :func:`store.labels.apply_labels`), refits the method in the background after each batch and shows its
cross-validated accuracy, and walks ``audit``'s suspected wrong labels.

- :mod:`~classify.labeling.app.data`: the store read once (features, ids, labels, splits) and kept in memory.
- :mod:`~classify.labeling.app.journal`: the answers CSV (appended, fsynced) and the session's small state file.
- :mod:`~classify.labeling.app.jobs`: the background work: the next batch, the cross-validated accuracy, the audit.
- :mod:`~classify.labeling.app.session`: one labeling session: batches, answers, skips, audit decisions.
- :mod:`~classify.labeling.app.routes`: the HTTP interface (Starlette) and the page (``static/``).
"""
