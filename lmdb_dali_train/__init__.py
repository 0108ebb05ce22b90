"""The DDP trainer (``train.py``, ``lmdb-train``, ``python -m lmdb_dali_train``) and the database command
lines (``lmdb-convert``/``convert.py``, ``lmdb-io``): flags, placement, engine, checkpoints, logs."""
