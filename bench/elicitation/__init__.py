"""Training and evaluation of the reasoning-trace elicitation head (``probewatch.campaigns.elicitation``).

``dataset.py`` builds the labelled prompts (our own wordings around calibration-half payloads);
``train.py`` embeds them, fits the logistic head, evaluates it and writes the shipped head and
``docs/benchmark/elicitation.md``. Run ``python -m bench.elicitation.train``.
"""
