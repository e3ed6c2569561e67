"""The CLI's subcommands, one module each, so that `cli.py` stays a table of contents."""
