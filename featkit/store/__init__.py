"""The store stage: the HDF5 embedding store — read (``reader``, its per-row table in
``rows``), written crash-safely (``writer``), checksummed (``integrity``), compared
(``fingerprint``), imported (``importer``) and exported (``export``)."""
