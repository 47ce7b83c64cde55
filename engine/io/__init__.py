"""What crosses probewatch's edges: input checks, snapshots and calibration files."""
