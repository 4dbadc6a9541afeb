"""Task-vector negation (``--method negate``): the classic baseline, an edit of the adapter alone.

``params.py`` declares ``--scale`` (no NumPy, torch or Typer: ``ucan --help`` reads it);
``method.py`` is the edit.
"""
