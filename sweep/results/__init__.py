"""Results: the Parquet store (source of truth), its schema, and the MLflow mirror."""
