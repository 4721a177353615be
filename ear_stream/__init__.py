"""ear-stream: EAR (Excision And Recovery) visual defect detection, offline and streaming."""

__version__ = "0.1.0"
