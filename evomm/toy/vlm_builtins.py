"""Built-in models of the toy VLM world, shipped in ``evomm/toy/models/vlm/``.

- ``toy-vlm-llava``: a LLaVA (LlavaForConditionalGeneration: tiny CLIP tower, projector, 4-layer
  Llama) that answers English questions about shape images ("what colour is the shape?" -> "red");
- ``toy-vlm-ja``:    a Llama LM that answers Japanese questions about things ("りんご は 何色 ですか?" -> "赤");
- ``toy-vlm-base``:  the Llama LM both were fine-tuned from (the base for task vectors).

The first use copies the shipped folder into ``$EVOMM_HOME/models/<name>``; from then on it loads
by path like any user model. ``python scripts/train_toy_vlm.py`` regenerates the folders.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from evomm.builtin import BUILDERS

SHIPPED = Path(__file__).parent / "models" / "vlm"
NAMES = {"toy-vlm-base": "base", "toy-vlm-ja": "ja", "toy-vlm-llava": "llava"}


def _copy_shipped(folder: str):
    def build(out_dir: Path) -> None:
        src = SHIPPED / folder
        if not (src / "config.json").is_file():
            raise FileNotFoundError(
                f"the shipped toy VLM-world model {src} is missing; regenerate it with "
                "python scripts/train_toy_vlm.py"
            )
        shutil.copytree(src, out_dir, dirs_exist_ok=True)

    return build


for _name, _folder in NAMES.items():
    BUILDERS.add(_name, _copy_shipped(_folder))
