"""podplug.vm."""
