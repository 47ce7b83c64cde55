"""Detection: per-account features, the benign reference, calibration and scoring, the pipeline.

Stages in the order a batch goes through them: :mod:`.stream` (k-NN in the account's
history, reference facts, account state) -> :mod:`.features` (the feature rows) ->
:mod:`.scoring` (risk, level, reasons) -> :mod:`.pipeline` (verdicts and housekeeping).
:mod:`.fitting` fits the benign model from known-benign traffic.
"""
