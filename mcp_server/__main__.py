"""`python -m mcp_server …`: the `memstore` command, for installs without its script."""

from .cli import main

main()
