"""evomm's main entry: compose conf/ with Hydra and run one evolutionary merge."""

import os
import sys

import hydra
from omegaconf import DictConfig

from evomm.errors import EvommError
from evomm.runner import run


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
