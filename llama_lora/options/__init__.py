"""What a run is: every option declared once, and the values that depend on the model or machine.

`config.TrainConfig` declares each option (flag, help, YAML key, fairness and resume behaviour); `recipe`
picks per-model defaults; `batching` declares the batch layouts; `tracking` the experiment trackers.
Add an option with one `_opt` field in `config.py`.
"""
