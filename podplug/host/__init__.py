"""podplug.host."""
