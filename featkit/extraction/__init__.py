"""The extraction stage: images → backbone → store, resumable (``run``: the plan and the entry
point; ``shards``: decoding, the forward pass, shard files; ``merge``: shards → store;
``distributed``: one pass split over processes).
"""
