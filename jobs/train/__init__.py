"""`hyperflow train`: the command (command.py), the one training loop (loop.py) and what it
trains (drift.py, smat.py), run as torchrun ranks or as a Ray Train run (ray_run.py)."""
