"""Re-process a screening archive on a Ray cluster: ``hemoseg-edge archive SRC --out DST``.

Ray Data runs ``Segmenter`` in actors (one model per actor, ``map_batches`` with a callable
class); each batch's rows are committed as one Parquet part file and folded into
``DST/results.parquet``, one row per (input, model sha256); each image's output files go under
``DST/outputs/``. Reruns skip what is done; killed workers and drivers lose and duplicate
nothing (``table`` says how). Needs the ``[archive]`` extra (``ray[data]``); ``docs/archive.md``.
"""

from .driver import ArchiveConfig, ArchiveSummary, resolve_model, run_archive
from .store import Store, list_inputs
from .table import RESULTS, STATUSES, read_table, schema, status_of

__all__ = [
    "RESULTS",
    "STATUSES",
    "ArchiveConfig",
    "ArchiveSummary",
    "Store",
    "list_inputs",
    "read_table",
    "resolve_model",
    "run_archive",
    "schema",
    "status_of",
]
