"""Route modules; each exports a ``router``."""
