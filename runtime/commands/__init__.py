"""Subcommands of the ``visa-edge`` CLI that belong to the runtime."""
