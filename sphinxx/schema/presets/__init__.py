"""The run presets, one YAML file per recipe (`sphinxx config presets` lists them); data, not code."""
