"""Inspection wing: the pipeline, training, evaluation, scoring and visualisation (uses model/ and io/)."""
