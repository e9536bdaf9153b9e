"""Search spaces (YAML). Shipped inside the package as ``saver_search.search_spaces``; ``default.yaml`` is the default."""
