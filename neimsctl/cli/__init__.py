"""L5: the command-line interface (typer); nothing imports this package."""
