"""sdglass core: physics and ML of amorphous s-d spin glasses, importable without Qt."""

__version__ = "0.1.0"
