"""aerec builder: data -> train -> evaluate -> export -> repository."""
__version__ = "0.1.0"
