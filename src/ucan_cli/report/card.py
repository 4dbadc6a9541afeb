"""The model card (README.md) of an attenuated adapter, written from the report document.

It says what a reader of the adapter directory needs before using it: the exact command, the
input hashes, what changed, the headline numbers, and in plain words what U-CAN does not
guarantee. The YAML front matter follows the Hugging Face model-card convention PEFT uses
(``library_name: peft``, ``base_model``) so hubs index the adapter correctly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ucan_cli.report.attenuate import headline, is_negation


def _yaml_str(value: str) -> str:
    """A YAML scalar that is always a plain string (JSON strings are valid YAML)."""
    return json.dumps(value, ensure_ascii=False)


def model_card(doc: Mapping[str, Any], *, base_model: str | None) -> str:
    """README.md for the output adapter directory of ``ucan attenuate``."""
    front = ["---", "library_name: peft"]
    if base_model:
        front.append(f"base_model: {_yaml_str(base_model)}")
    front += ["tags:", "- lora", "- machine-unlearning", "- ucan", "---", ""]

    from ucan_cli.methods.registry import get as get_method

    method = get_method(doc["options"].get("method", "ucan"))  # reports before --method were U-CAN's
    s = doc["summary"]
    inputs, out, receipt = doc["inputs"], doc["output"] or {}, doc["receipt"]
    if "training" in doc and "train_records" in doc["training"]:  # retrain: fresh A and B, trained without the forget users
        tr, kept = doc["training"], doc["training"]["train_records"]
        what = (
            f"This adapter was retrained by ucan: {method.description}; {kept['removed']} of the training file's "
            f"{kept['n_records']} records were removed, {kept['kept']} trained on for {tr.get('epochs')} epochs "
            f"({tr.get('steps_run')} steps). The adapter config is byte-identical and every tensor keeps its name, shape and dtype."
        )
        effect = "It never saw the forget users' records in the training file"
    elif "training" in doc and "steps_run" in doc["training"]:  # a gradient method: A and B were trained
        tr = doc["training"]
        what = (
            f"This adapter is a copy of the input adapter whose LoRA weights ucan changed by {tr.get('steps_run')} steps of "
            f"{method.pretty_name}: {method.description} (stopped by {tr.get('stop_reason')}). The adapter config is "
            "byte-identical and every tensor keeps its name, shape and dtype; lora_A and lora_B of every module changed."
        )
        effect = "It makes the forget set's responses less likely"
    elif is_negation(doc):  # negate: an edit of the adapter alone
        what = (
            f"This adapter is a copy of the input adapter changed by {method.pretty_name} at scale {s['scale']}: "
            f"{method.description}. The adapter config is byte-identical and every tensor keeps its name, shape and dtype."
        )
        effect = "It turns the whole adapter's update around, for every user, not only the forget set's"
    else:
        what = (
            "This adapter is a copy of the input adapter in which ucan down-scaled "
            f"{s['n_attenuated']} of {s['n_units']} LoRA {doc['unit']} units: {method.description}. Nothing else changed: the adapter "
            "config is byte-identical, lora_A is unchanged, and only the listed lora_B slices"
            " (and their lora bias entries) were scaled."
        )
        effect = "It reduces the adapter's response to the forget set"
    lines = front + [
        f"# LoRA adapter attenuated with ucan ({method.pretty_name})",
        "",
        what,
        "",
        "## Important: what this does not guarantee",
        "",
        "- This is **approximate unlearning with no formal guarantee**. "
        f"{effect}; it does not prove that the data's influence is gone.",
        "- **Earlier copies of the adapter still hold the data**: the input adapter, its backups, "
        "checkpoints and any published copy are unchanged.",
        "- **Merged models still hold the data**: a base model merged with the earlier adapter "
        "carries the earlier update in its weights.",
        "- **modules_to_save still hold the data**: fully fine-tuned copies of modules (for "
        "example an embedding or a classification head) are not edited by ucan.",
        "- Evaluate the result (`ucan eval`) before relying on it.",
        "",
        "## How it was made",
        "",
        "```",
        doc["command_line"],
        "```",
        "",
        "| input | path | SHA-256 |",
        "|---|---|---|",
    ]
    for name, value in inputs.items():
        if isinstance(value, Mapping):
            lines.append(f"| {name} | `{value.get('path')}` | `{value.get('sha256')}` |")
        elif value is not None:
            lines.append(f"| {name} | `{value}` | |")
    lines += [
        "",
        f"Output `adapter_model.safetensors` SHA-256: `{out.get('adapter_sha256')}`.",
        "",
        f"The forget set is identified only by its receipt, HMAC-SHA256 `{receipt['forget_set_hmac']}` under "
        f"the receipt key with fingerprint `{receipt['key_fingerprint']}`: whoever holds that key can check "
        "which records were forgotten; nobody else can. No forget text or record id is stored here.",
        "",
        "## What changed",
        "",
        "| | |",
        "|---|---|",
    ]
    lines += [f"| {label} | {value} |" for label, value in headline(doc)]
    lin = doc["lineage"]
    lines += [
        "",
        f"This is request {lin['seq']} in this adapter's lineage (see `ucan_ledger.jsonl`, a hash-chained "
        "record of every ucan edit with its cumulative per-unit factors). Per-module numbers are in "
        "`ucan_report.json` and `ucan_report.md`; the resolved options are in `ucan_config.toml`.",
        "",
        "## Loading",
        "",
        "```python",
        "from peft import PeftModel",
        "model = PeftModel.from_pretrained(base_model, \"path/to/this/directory\")",
        "```",
        "",
    ]
    return "\n".join(lines)
