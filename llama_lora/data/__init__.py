"""Rows to training tokens: read sources (files, folders, saved datasets, the hub), recognise a row format and
turn it into conversations, render them with the chat template, tokenize and mask the loss, cache the
tokenized tables, and audit the result.
"""
