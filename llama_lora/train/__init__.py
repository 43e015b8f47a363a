"""One training run: the command line both entry scripts share, the pipeline that runs it, the one SFTTrainer
set-up, pre-emption (SIGTERM), and the base-vs-tuned samples written after training.
"""
