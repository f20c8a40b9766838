"""Use cases that the commands call: each takes plain values and a Context, returns results."""
