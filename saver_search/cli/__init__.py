"""The command line: ``main`` parses the subcommand and maps library errors to flags (one table, checked
against argparse by the tests); one module per command (``search``, ``importer`` for ``import``, ``costs``,
``plan``, ``cache``, ``report``, ``export``, ``predict``) parses its flags, calls the library and prints. May import
every other subpackage; nothing imports it but ``__main__``.
"""
