"""Tests of podplug.vm: the QMP adapter, QOM placement read-back and the QEMU lifecycle."""
