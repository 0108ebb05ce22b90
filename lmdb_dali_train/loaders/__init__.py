"""The loaders the trainer iterates: the ``Batch`` contract and ``BatchLoader`` protocol (``batch``),
the torchvision DataLoader (``torch_loader``) and its on-device normalisation (``normalize``), the DALI
loaders (``dali_loader``, over ``dali_pipeline``'s graphs) and synthetic batches (``synthetic``).

Below the trainer: nothing here imports the rest of ``lmdb_dali_train``. What both loaders follow (the
rank plan, the presets, the resolution schedule) lives in ``lmdb_io.reading``.
"""
