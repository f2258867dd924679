"""Renderers: the plan as QEMU argv, QMP messages, a tree, JSON and Graphviz dot.

All pure, all deterministic: the same plan always renders byte for byte the same.
"""
