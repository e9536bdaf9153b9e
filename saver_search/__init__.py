"""saver_search: find a tiny companion model and exit threshold that make a large classifier cheap to run."""

__version__ = "0.1.0"
