"""A search's results for people: the console table and JSON, the stored trace, its plots and the report
folder.

Modules: ``console`` (table and JSON), ``tables`` (aligned plain-text tables), ``trace`` (a stored search as plain
records), ``plots`` (matplotlib, Agg canvas), ``files`` (``summary.md`` and PNGs). May import: ``search``,
``cascade``, ``predictions``, ``zoo`` and the base modules. No torch.
"""
