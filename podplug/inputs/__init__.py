"""podplug.inputs."""
