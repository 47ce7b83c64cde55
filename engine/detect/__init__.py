"""Detection: per-account features, the benign reference, calibration and scoring, the pipeline.

Before the model embeds a prompt, :mod:`.boilerplate` decides what of it is read (not the
long boilerplate its account's last long prompt also had). Then, in the order a batch goes
through them: :mod:`.stream` (k-NN in the account's history, reference facts, account
state) -> :mod:`.features` (the feature rows) -> :mod:`.scoring` (risk, level, reasons) ->
:mod:`.pipeline` (verdicts and housekeeping).
:mod:`.fitting` fits the benign model from known-benign traffic.
"""
