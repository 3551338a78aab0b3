"""Data: reading corpora (`corpora`), known public corpora (`registry`), examples (`datasets`) and
batches (`batching`). Nothing here imports a model: a dataset sees strings and integers, never a module."""
