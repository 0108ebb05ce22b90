"""How a database is read for training, shared by the DALI graphs and both loaders: which samples each
rank reads in which order (``plan``), how each is augmented (``presets``, ``constants``), at which size
(``resolution``), what a bad record is (``bad_records``) and how reader workers treat stop signals
(``workers``); ``spec``'s ``ReadSpec`` gathers what one rank reads, for both loader factories.

Standard library and numpy only at import (DALI's spawned source workers import ``plan``,
``resolution`` and ``workers``); ``presets`` imports torchvision when a transform is built.
"""
