"""The results stage: the CSV files of a workspace (``files``: read, lock, replace as one
generation) and their rows (``io``: write, merge, read, summarise).
"""
