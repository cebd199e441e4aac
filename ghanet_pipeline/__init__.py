"""ghanet: G-HANet survival prediction from whole-slide images (library)."""

__version__ = "0.1.0"
