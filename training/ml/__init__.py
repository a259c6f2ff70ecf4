"""Pure ML code (tokenizer/model bootstrap, TRL wrappers, metrics). Imports no Django."""
