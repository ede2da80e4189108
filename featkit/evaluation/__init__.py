"""The evaluation record: splits and episodes (``splits``), the result rows of one episode
(``records``), setting selection on validation (``selection``), and the probe sweep (``probe``,
with its input checks in ``checks``). Metrics live one level down, in :mod:`featkit.metrics`.
"""
