"""Pictures: the report's plots (``plots``, ``shots_panels``) and DINO's attention maps
(``attention``).
"""
