"""The data stage: find and decode a data set's images (``images``), and the bundled digits
(``digits``).
"""
