"""podplug.plan."""
