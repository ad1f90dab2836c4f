"""How one model family turns a record into prompt text and a ground-truth answer into text.

The rest of perpo never branches on the family name: a family's quirks (chat template,
image placeholder, box convention) live here and in its processor. The default
``ChatFamily`` uses the processor's own chat template, which is what transformers ships with
every LLaVA / Qwen-VL / Idefics checkpoint, so most families need only a ``box_format``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from perpo.boxes import get_box_format, write_box


@dataclass
class TaskSpec:
    """What a task asks and how long its answers are (from ``conf/task/*.yaml``)."""

    name: str
    instruction: str  # formatted with the record's ``prompt``: "... describes: {prompt}"
    max_new_tokens: int


class ChatFamily:
    """Prompts via ``processor.apply_chat_template``; answers in the family's box convention."""

    def __init__(self, processor: Any, box_format: str = "norm2", system_prompt: str | None = None, box_frame: str = "original"):
        self.processor = processor
        self.box_format_name = box_format
        self.box_format = get_box_format(box_format)
        self.box_frame = box_frame  # the picture the model's box numbers are fractions of (perpo.boxes)
        self.system_prompt = system_prompt

    def prompt_text(self, record: Mapping, task: TaskSpec) -> str:
        """Chat-formatted prompt ending with the assistant's turn, image placeholder included."""
        instruction = task.instruction.format(prompt=record["prompt"]).strip()
        messages = []
        if self.system_prompt:
            messages.append({"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        messages.append(
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}
        )
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def answer_text(self, record: Mapping, task: TaskSpec) -> str:
        """The ground truth written as this family should answer it (SFT targets, DPO chosen)."""
        target = record["target"]
        if task.name == "grounding":
            return write_box(list(target), record, self.box_format, self.box_frame)
        if task.name == "counting":
            return str(int(target))
        return str(target)


def task_spec(cfg) -> TaskSpec:
    """The task of a composed Hydra config (``cfg.task``)."""
    return task_spec_of(cfg.task.name, cfg.task)


def task_spec_of(name: str, node) -> TaskSpec:
    """The spec of a task node (``cfg.task``, or a ``conf/task/<name>.yaml``'s ``task``)."""
    return TaskSpec(name, node.instruction, int(node.max_new_tokens))


def answer_ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of ground-truth / stored answers, terminated by EOS as a sampled answer is."""
    eos = tokenizer.eos_token_id
    return [tokenizer(t, add_special_tokens=False)["input_ids"] + [eos] for t in texts]
