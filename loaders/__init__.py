"""The loader layer: the ``Batch`` contract and ``BatchLoader`` protocol (``batch``), the rank plan
(``plan``), the presets both loaders follow (``presets``, ``constants``), and the loaders: torchvision
(``torch_loader.make_torch_loader``), DALI (``dali_loader.make_dali_loader``) and synthetic batches
(``synthetic``).

Import from the submodules: ``loaders.plan`` needs only numpy (DALI's source workers import it), the
torch loader needs torchvision, the DALI loader needs DALI.
"""
