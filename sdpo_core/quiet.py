"""Library output is not the user's: transformers', peft's and huggingface_hub's warnings,
log lines and progress bars ("Loading weights", "Writing model shards") are shown only when
an entry point runs with --verbose."""

from __future__ import annotations

import logging
import os
import warnings

LIBRARIES = ("transformers", "peft", "huggingface_hub", "accelerate", "torch", "urllib3", "httpx")


def quiet_libraries(verbose: bool = False) -> None:
    """Call first thing in an entry point (before transformers is imported, so its
    environment switches apply; its own switches are set too when it already is)."""
    if verbose:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for module in LIBRARIES:
        warnings.filterwarnings("ignore", module=rf"{module}(\.|$)")
        logging.getLogger(module).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # the API's image has no transformers
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
