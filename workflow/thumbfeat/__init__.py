"""thumbfeat: turn an image catalog into a table of per-image visual features."""
