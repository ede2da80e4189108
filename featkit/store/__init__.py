"""The store stage: the HDF5 embedding store — read (``reader``), written crash-safely (``writer``),
checksummed (``integrity``), compared (``fingerprint``), imported (``importer``) and exported
(``export``)."""
