"""Tests of podplug.guest: the agent protocol, the guest image builder and the agent in a VM."""
