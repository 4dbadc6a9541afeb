"""Which records of the training file retraining may use: every forget user's record removed.

The deletion request is the forget file. A training record is removed, before it is tokenized or
otherwise used, when any of these holds:

* its ``user_id`` is the ``user_id`` of a forget record (the request names users: every record
  of theirs goes, not only those in the forget file);
* its ``id`` is the ``id`` of a forget record (the same record, whoever it is filed under);
* it has the content of a forget record without a ``user_id``: the same kind, prompt fields
  (``instruction`` and ``input``, or ``prompt``) and response, compared exactly. A forget record
  with a ``user_id`` is covered by its user; content is the backstop for records that name no
  user (and carry no id, or an id the training file spells differently).

Every other record is kept, in file order. ``RemovalCounts`` says how many went for which reason
(a record removed for several reasons counts under the first of user, id, content). Pure: no
I/O, no tokenizer; the flow reads both files and passes the kept records on.
"""

from __future__ import annotations

from dataclasses import dataclass

from ucan_cli.io.data import Record, RecordSet


@dataclass(frozen=True)
class RemovalCounts:
    """How many training records were kept and removed, and why."""

    n_records: int
    kept: int
    removed: int
    by_user: int
    by_id: int
    by_content: int

    def to_dict(self) -> dict[str, int]:
        return {
            "n_records": self.n_records, "kept": self.kept, "removed": self.removed,
            "removed_by": {"user_id": self.by_user, "id": self.by_id, "content": self.by_content},
        }


def content_key(record: Record) -> tuple:
    """A record's (kind, prompt fields, response), compared exactly."""
    f = record.fields
    prompt = (f.get("instruction"), f.get("input") or "") if record.kind == "alpaca" else (f.get("prompt"),)
    return (record.kind, *prompt, record.response)


def without_forget_users(train: RecordSet, forget: RecordSet) -> tuple[RecordSet, RemovalCounts]:
    """``train`` without the records of ``forget``'s users (see the module docstring), and the counts."""
    users = {r.user_id for r in forget if r.user_id is not None}
    ids = {r.id for r in forget if r.id is not None}
    contents = {content_key(r) for r in forget if r.user_id is None}
    kept: list[Record] = []
    by_user = by_id = by_content = 0
    for record in train:
        if record.user_id is not None and record.user_id in users:
            by_user += 1
        elif record.id is not None and record.id in ids:
            by_id += 1
        elif contents and content_key(record) in contents:
            by_content += 1
        else:
            kept.append(record)
    removed = by_user + by_id + by_content
    counts = RemovalCounts(len(train), len(kept), removed, by_user, by_id, by_content)
    rest = RecordSet(train.path, train.role, tuple(kept), train.sha256, train.n_total, train.extra)
    return rest, counts


__all__ = ["RemovalCounts", "content_key", "without_forget_users"]
