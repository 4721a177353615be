"""I/O wing: decoding images, MVTec-layout datasets, Parquet results. Imports no higher wing."""
