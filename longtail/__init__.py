"""longtail: fair-to-rare-classes image classification on vision foundation models."""

__version__ = "0.1.0"
