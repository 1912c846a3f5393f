"""streamgraph runtime: media types, stages, edges, graph, runner, engines, bus.

Knows nothing about any particular model or protocol; stages live in the ``stages`` package and
register themselves by name.
"""

__version__ = "0.1.0"
