"""Backbones and text encoding. Knows torch and open_clip; never Typer or Rich."""
