"""podplug.guest."""
