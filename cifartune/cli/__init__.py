"""The ``cifartune`` command line: the only layer that prints. May import every layer.

Each command imports what it needs when it runs, so ``cifartune validate`` or ``status`` never
pays for torch or Ray.
"""
