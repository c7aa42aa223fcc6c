"""valign-edge: align a small local language model to the values in a document, offline.

Importing this package is cheap on purpose: torch, mlx, llama_cpp and textual are
imported only inside the stages and backends that need them.
"""

__version__ = "0.1.0"

# Run folders record the layout version they were written with; a run written by an
# incompatible layout is refused instead of being silently misread.
RUN_FORMAT_VERSION = 1

# Privacy: nothing in valign-edge may reach a network. Switch the libraries we use to their
# offline modes before any of them is imported (users can still override these on purpose).
import os as _os

for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                     "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false",
                     "GRADIO_ANALYTICS_ENABLED": "False",
                     "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
                     "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}.items():
    _os.environ.setdefault(_key, _value)
