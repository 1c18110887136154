"""EGATH: end-to-end graph attention network hashing for cross-modal retrieval.

Stages, each a module: datasets (raw data -> pairs.h5), features (CLIP -> HDF5),
graph (label co-occurrence), model / losses / training, encoding (hash codes),
metrics (Hamming ranking), reporting (tables, figures).
"""
__version__ = "0.1.0"
