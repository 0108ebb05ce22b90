"""The DDP trainer behind train.py: config, placement, loaders, engine, checkpoints, logs."""
