"""python -m llama_lora.data.formats: print the table of row formats (docs/data.md holds it) from the registry."""

from llama_lora.data.formats import markdown_table

print(markdown_table())
