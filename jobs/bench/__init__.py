"""`hyperflow bench NAME`: the command (command.py) and one module per benchmark."""
