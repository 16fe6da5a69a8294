"""evomm: evolve model-merge recipes for LLMs, VLMs and SDXL.

Entry points: ``evomm.runner.run(cfg)`` (what ``train.py`` calls), the ``evomm`` command
(``evomm.cli``), the public scorers in ``evomm.metrics``.
"""

__version__ = "0.1.0"
