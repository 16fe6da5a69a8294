"""evomm's main entry: compose conf/ with Hydra and run one evolutionary merge."""

import os
import sys

from evomm.config_moves import check_argv
from evomm.errors import ConfigError


def _refuse_old_overrides() -> None:
    """An override written for the config layout before the space group (merge=dfs,
    merge.granularity=layer, ...) gets one line naming the new key, before Hydra composes
    anything or torch is imported."""
    try:
        check_argv(sys.argv[1:])
    except ConfigError as e:
        print(f"evomm: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    _refuse_old_overrides()

import hydra  # noqa: E402  (after the argument scan: a refused override costs no import)
from omegaconf import DictConfig  # noqa: E402

from evomm.errors import EvommError  # noqa: E402
from evomm.runner import run  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except EvommError as e:  # a mistake the user fixes: one readable line, no traceback
        print(f"evomm: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # the run has said what it kept and how to resume; no traceback
        sys.exit(130)


if __name__ == "__main__":
    if int(os.environ.get("RANK", "0")) > 0:
        # Under torchrun / accelerate only rank 0 writes the run directory (Hydra's files too).
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    main()
