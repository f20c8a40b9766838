"""Data sets: the embedded shapes world and user image folders. Never imports the model."""
