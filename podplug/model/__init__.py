"""Value types shared by every layer: PCI addresses, enums, host facts, container requests."""
