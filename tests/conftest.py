import os

# Tests must never reach the network or the user's ~/.medmnist by accident.
os.environ.setdefault("MPLBACKEND", "Agg")
