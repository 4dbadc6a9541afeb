"""Prompt templates: how a record becomes the text the model reads before its response.

One formatter is used by training, scoring, evaluation and candidate scoring alike, so a record
always sees the same prompt. Prompt/completion records always use their prompt as is.
"""

from __future__ import annotations

from pathlib import Path

from ucan_cli.errors import InputError
from ucan_cli.io.data import Record

ALPACA = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
ALPACA_NO_INPUT = "### Instruction:\n{instruction}\n\n### Response:\n"
BUILTIN_TEMPLATES = ("alpaca", "plain", "chat")


class PromptFormatter:
    """Turns a record into its prompt string under one template.

    ``template`` is ``alpaca`` (default), ``plain`` (instruction and input joined by a blank
    line), ``chat`` (the tokenizer's chat template with the user turn and the generation
    prompt), or a path to a Jinja2 file rendered with the record's fields.
    """

    def __init__(self, template: str = "alpaca", tokenizer=None):
        self.name = template
        self.tokenizer = tokenizer
        self._jinja = None
        if template not in BUILTIN_TEMPLATES:
            path = Path(template)
            if not path.is_file():
                raise InputError(
                    f"--template: {template!r} is neither one of {', '.join(BUILTIN_TEMPLATES)} nor a file"
                )
            import jinja2

            try:
                env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
                self._jinja = env.from_string(path.read_text(encoding="utf-8"))
            except jinja2.TemplateSyntaxError as exc:
                raise InputError(f"{path}:{exc.lineno}: template syntax error ({exc.message})") from None
            self._template_path = path
        if template == "chat" and (tokenizer is None or not getattr(tokenizer, "chat_template", None)):
            raise InputError("--template chat: the tokenizer has no chat template")

    def prompt(self, record: Record, source: str | Path | None = None) -> str:
        fields = record.fields
        if record.kind == "prompt":
            return fields["prompt"]
        instruction, input_text = fields["instruction"], fields.get("input") or ""
        if self.name == "alpaca":
            if input_text:
                return ALPACA.format(instruction=instruction, input=input_text)
            return ALPACA_NO_INPUT.format(instruction=instruction)
        if self.name == "plain":
            return f"{instruction}\n\n{input_text}" if input_text else instruction
        if self.name == "chat":
            user = f"{instruction}\n\n{input_text}" if input_text else instruction
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
            )
        import jinja2

        try:
            return self._jinja.render(**fields)
        except jinja2.UndefinedError as exc:
            where = f"{source}:{record.line}" if source else f"line {record.line}"
            raise InputError(f"{where}: template {self._template_path} needs a field the record lacks ({exc.message})") from None

    @property
    def adds_special_tokens(self) -> bool:
        """Chat templates already carry the BOS; tokenizing them again would add a second one."""
        return self.name != "chat"
