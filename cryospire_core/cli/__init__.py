"""The ``cryospire`` command line: one module per subcommand, each with ``add_args`` and ``run``."""
