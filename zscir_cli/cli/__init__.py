"""The Typer app. Only this package imports Typer and Rich; nothing imports it."""
