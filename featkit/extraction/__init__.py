"""The extraction stage: images -> backbone -> store, resumable.

``plan``: settings, work list, shard layout, thread plan; ``forward``: decoding and the
forward pass; ``shards``: shard files; ``merge``: shards -> store; ``run``: the entry
point (:func:`featkit.extraction.run.extract`); ``distributed``: one pass split over
processes. Each module imports only those before it in this list.
"""
