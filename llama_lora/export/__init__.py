"""A trained adapter leaving the project: a merged 16-bit model, GGUF files for llama.cpp, an Ollama Modelfile.
"""
