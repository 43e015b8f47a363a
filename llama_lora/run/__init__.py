"""What a run leaves behind and how it is read back: the run folder (staging, checkpoints, resume), the typed
`metrics.json` record, measurements of memory and speed, the loss plot, and the fair comparison of two runs.
"""
