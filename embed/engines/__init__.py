"""Embedding engines: one decode-preprocess-forward loop (:mod:`~embed.engines.local`, single process) and its
scale-out over Ray Data actors (:mod:`~embed.engines.ray`), both writing through :mod:`store`."""
