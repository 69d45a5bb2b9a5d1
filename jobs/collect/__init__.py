"""`hyperflow collect`: the command (command.py) and active collection (focus.py, with the Ray
scoring of candidates in focus_scoring.py)."""
