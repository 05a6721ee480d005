"""CLI subcommands, one module each (see longtail/cli.py for the contract)."""
