"""The entry points: the command line, the worker processes, one worker's server. The
top of the import graph: they wire the composition root (server/app.py) into running
processes; nothing imports them but `python -m server`."""
