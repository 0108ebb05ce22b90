"""DALI graphs and sources over lmdb_io databases: GPU (``mixed``) decoding and augmentation, CPU fallback.

``dali_pipeline.source`` (the external-source callbacks) needs no DALI; ``pipelines``, ``val_geometry``
and ``decode_check`` do. The loaders that wrap these graphs into torch batches live in ``lmdb_dali_train.loaders``.
"""
