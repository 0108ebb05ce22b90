"""The bench library: machine, data, timing, train.py's log, tables and RESULTS.md. Scripts import only this."""
