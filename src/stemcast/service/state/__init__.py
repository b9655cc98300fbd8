"""What the service records: the SQLite registry of runs and jobs, and their states."""
