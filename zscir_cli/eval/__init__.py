"""Retrieval metrics over rankings. Pure numpy; no model, no index."""
