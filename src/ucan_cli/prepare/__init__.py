"""Data preparation: MovieLens-100K by the paper's protocol, and forget/retain splits by user id.

``movielens`` turns MovieLens-100K into instruction records (SPEC section 5); ``split`` turns a
deletion request (a list of user ids) into forget and retain files. The CLI front end is
``ucan_cli.commands.prepare``.
"""

from __future__ import annotations

import importlib
from typing import Any

# Names resolve on first use: ``movielens`` needs NumPy, and ``ucan --help`` must not pay for it.
_EXPORTS = {
    "PrepareOptions": "movielens",
    "PreparedMovieLens": "movielens",
    "prepare_movielens": "movielens",
    "SplitResult": "split",
    "split_by_users": "split",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ucan_cli.prepare' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ucan_cli.prepare.{_EXPORTS[name]}"), name)
