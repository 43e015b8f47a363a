"""A trained run folder loaded again with plain transformers + PEFT: generation, chat, and checks that the
adapter means the same thing under other loaders.
"""
