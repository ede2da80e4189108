"""Makes ``tests`` a package so test modules can share ``from tests.helpers import ...``.

pytest (rootdir-based ``prepend`` import mode) then puts the repository root on
``sys.path``, which works the same under ``pytest`` and ``python -m pytest``.
"""
