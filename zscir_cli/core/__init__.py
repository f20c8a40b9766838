"""The bottom layer: errors, the artifact cache, progress reporting, devices, seeds.

Nothing here imports torch at module level, so the CLI can start without it.
"""
