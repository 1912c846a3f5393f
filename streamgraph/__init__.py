"""streamgraph's Python API: ``Pipeline`` runs a pipeline in your program (docs/python-api.md).

The runtime lives in the ``pipeline`` and ``stages`` packages; this package is the name to
import it by.
"""

from pipeline.api import Pipeline, PipelineThread, Result, run_in_thread

__all__ = ["Pipeline", "PipelineThread", "Result", "run_in_thread"]
