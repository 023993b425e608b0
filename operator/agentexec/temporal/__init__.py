"""Everything that owns or talks to Temporal: connection, workers, workflows."""
