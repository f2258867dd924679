"""podplug.render."""
