"""The base model before and around loading: the embedded SmolLM2 and the Llama 3.1 tokenizer that ship in
packages, model names to paths, preflight checks from config.json, the GPU memory plan, and the NF4 setting.
How a backend loads and wraps the model is not here: that is each entry script's `load` (see `backend`).
"""
