"""Built-in model families (one small module each) and example experiment specs (*.yaml)."""
