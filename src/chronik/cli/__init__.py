"""The ``chronik`` command line (thin: it calls the library).

``main.py`` builds the parser and runs a command; each command group is a module with
``register(subparsers, common)``; what they share is in ``_common.py``.
"""

__all__: list[str] = []
