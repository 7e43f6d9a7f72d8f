"""Evaluation and calibration: the model's forward pass (layer by layer, weights streamed, hooks on each linear
layer's input), the tokenizer, chunking of a token stream as llama.cpp's tools do it, the importance-matrix
accumulator (``calibrate``: what ``llama-imatrix`` collects) and the streaming PPL/KLD reducer (``metrics``: what
``llama-perplexity --kl-divergence`` reports)."""
