"""Nearest neighbours: the exact blocked search (``search``) and the questions a store answers
about single images (``questions``: neighbours, duplicates, label noise)."""
