"""``make bench``: the serving path measured beside the usual Keras way, on one core.

``python -m benchmarks`` runs every measurement in fresh processes pinned to one core and writes a
Markdown report and its JSON (``--out reports/bench``); ``python -m benchmarks.report --readme``
copies the headline table from the JSON into README.md. See ``benchmarks.run``.
"""
