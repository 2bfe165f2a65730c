"""The command-line entry points that are not part of another subpackage.

Each module has a ``main(argv=None) -> int`` that ``pyproject.toml``'s ``[project.scripts]`` installs as a
console command (``bge-train``, ``bge-extract``, ``bge-evaluate``, ``bge-benchmark-efficiency``,
``bge-gpu-prune-check``, ``bge-target-shapes``, ``bge-prune-vocab``) and that ``train.py`` / ``scripts/*.py``
call, so both spellings of a command run the same code.
"""
