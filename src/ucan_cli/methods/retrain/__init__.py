"""Retraining without the forget users (``--method retrain``): the gold standard of unlearning.

``params.py`` declares ``--lr`` and ``--epochs`` (no NumPy, torch or Typer: ``ucan --help`` reads
it); ``removal.py`` removes every forget user's record from the training file (pure, on records);
``method.py`` re-initialises the adapter's own LoRA weights and trains them.
"""
