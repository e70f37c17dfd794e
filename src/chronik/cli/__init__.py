"""The ``chronik`` command line (thin: it calls the library)."""
