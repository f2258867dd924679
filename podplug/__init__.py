"""podplug: plan, plug and prove every device of a VM-isolated container."""
