"""Export: a trained model's whole scoring function as one graph for runtimes outside this package.

:mod:`.graph` composes the graph from the pipeline's parts; :mod:`.writer` writes and checks an export
directory. Reading one back and running it is :mod:`ear_stream.model.exported`'s (the pipeline loads
exported directories too).
"""
