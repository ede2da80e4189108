"""The report stage: the comparison table (``table``), the cost table (``cost``), the plain-words
answer (``answer``), the data summary (``datasummary``), the HTML page (``html``) and the entry
point that writes them all (``build``).
"""
