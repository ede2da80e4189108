"""Nearest neighbours: the cosine index (``search``: exact, IVF, HNSW), the streamed exact
search for sets larger than memory (``exact``), row blocks and top-k merging (``blocks``),
recall against exact search (``recall``), and the questions a store answers about single
images (``questions``: neighbours, duplicates, label noise)."""
