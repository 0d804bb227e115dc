"""Class-conditional generation: class names or indices → codes → images, with a VIM model
trained with classes (``vqgen train --codes ... --preset vim-*`` on labelled codes).

    pipe = ClassConditionalPipeline.from_pretrained("runs/digits-pipeline")
    out = pipe(["3", 7], num_images=2, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))

``pipeline.json`` lists the class names; ``out.prompts`` holds the class name of each image. A
tokenizer whose decoder is conditioned on the class (the patent's claims 31–43) gets each row's
class when the codes are decoded.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from vqgen.errors import VqgenError
from vqgen.pipelines.base import Pipeline


class ClassConditionalPipeline(Pipeline):
    """Class labels → images with a class-conditional token transformer."""

    pipeline_type = "class_conditional"
    cond_kind = "class"

    def _class_names(self, names: Sequence[str] | None) -> list[str]:
        n = self.transformer.config.num_classes
        names = [str(x) for x in names] if names else [str(i) for i in range(n)]
        if len(names) != n:
            raise VqgenError(f"{len(names)} class names for a model of {n} classes")
        if len(set(names)) != n:
            raise VqgenError("class names must be distinct")
        return names

    def class_id(self, label: Any) -> int:
        """A class index from an index or a class name (a digit string that is no class name is an
        index, as typed on the command line or sent to the server); ``VqgenError`` if it names no class."""
        if isinstance(label, str) and label.strip() not in self.class_names and label.strip().isdigit():
            label = int(label.strip())
        if isinstance(label, int) and not isinstance(label, bool):
            if not 0 <= label < len(self.class_names):
                raise VqgenError(f"class {label} is outside 0..{len(self.class_names) - 1}")
            return label
        if isinstance(label, str) and label.strip() in self.class_names:
            return self.class_names.index(label.strip())
        shown = ", ".join(self.class_names[:20]) + (" ..." if len(self.class_names) > 20 else "")
        raise VqgenError(f"unknown class {label!r}; classes: {shown}")

    def validate_prompt(self, prompt: Any) -> str:
        """The class name of a class label (name or index)."""
        return self.class_names[self.class_id(prompt)]

    def condition(self, labels: list[str], device):
        from vqgen.transformer.base import Condition

        return Condition(class_ids=torch.tensor([self.class_names.index(x) for x in labels], device=device))
