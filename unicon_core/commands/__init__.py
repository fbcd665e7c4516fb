"""Bodies of CLI commands, one module per area; the typer layer in cli.py stays thin."""
