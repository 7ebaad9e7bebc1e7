"""One module per verifier kind: its typed spec (fields, `check`, `build`) and its verifier."""
