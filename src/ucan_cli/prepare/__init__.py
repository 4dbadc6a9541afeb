"""Data preparation: MovieLens-100K by the paper's protocol, and forget/retain splits by user id.

``movielens`` turns MovieLens-100K into instruction records (SPEC section 5); ``split`` turns a
deletion request (a list of user ids) into forget and retain files. The CLI front end is
``ucan_cli.commands.prepare``.
"""

from __future__ import annotations

from ucan_cli.prepare.movielens import PrepareOptions, PreparedMovieLens, prepare_movielens
from ucan_cli.prepare.split import SplitResult, split_by_users

__all__ = ["PrepareOptions", "PreparedMovieLens", "SplitResult", "prepare_movielens", "split_by_users"]
