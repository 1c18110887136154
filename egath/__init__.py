"""EGATH: end-to-end graph attention network hashing for cross-modal retrieval.

Stages, each a module: datasets (raw data -> pairs.h5), features (CLIP -> HDF5),
graph (label co-occurrence), methods (one module per method, one registry), inputs (each
method's input form), first_stage, tuning and training, encoding (hash codes), metrics and
hamming (Hamming ranking), reporting and examples (tables, figures); lineage (which files
belong together) and sources (code digests) guard reruns; search, collection and serve use a
trained model.
"""
__version__ = "0.1.0"
