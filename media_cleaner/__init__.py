"""Media Cleaner: protect a video's faces and voice against harvesting before it is published."""
__version__ = "0.1.0"
