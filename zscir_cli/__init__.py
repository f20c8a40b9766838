"""zscir: zero-shot composed image retrieval, from mapping to composing."""

__version__ = "0.1.0"
