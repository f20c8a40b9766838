"""Nearest-neighbour search over L2-normalised features. Takes arrays, never models."""
