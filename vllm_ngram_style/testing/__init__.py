"""Small local stand-ins used by tests and benchmarks: a BPE tokenizer trained on the spot and a
tiny random Llama. Nothing here downloads anything."""
