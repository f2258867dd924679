"""The guest image builder: the kernel and initramfs podplug boots, and their cache.

Pure (bytes, names and mappings in; no files, processes or environment):

* :mod:`~podplug.image.elf`: the few ELF-64 header reads the builder needs.
* :mod:`~podplug.image.kmod`: ``.modinfo`` parsing, softdeps and the module load order.
* :mod:`~podplug.image.cpio`: the newc cpio writer of the initramfs.
* :mod:`~podplug.image.kernel`: kconfig parsing and the ``vmlinux`` inside a bzImage.

Shell:

* :mod:`~podplug.image.tools`: host tools from the system's directories, busybox.
* :mod:`~podplug.image.apt`: the kernel package, resolved and fetched with apt.
* :mod:`~podplug.image.modtree`: the module files of an unpacked kernel package.
* :mod:`~podplug.image.cache`: the cache directory, its locks, publishing and sweeping.
* :mod:`~podplug.image.build`: :func:`~podplug.image.build.build_image`, which ties them
  together, and :class:`~podplug.image.build.GuestImage`.
"""
