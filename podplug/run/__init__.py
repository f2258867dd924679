"""``podplug run``: carry a plan out in a real QEMU VM and prove every device in the guest."""
