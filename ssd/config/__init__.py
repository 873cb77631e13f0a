"""The configuration: its schema, validation, recipes and presets, the architecture table, resuming."""
