"""Click commands only: parse arguments, call the library, print results."""
