"""The measured uplift of SendFlowr's timing on the user's own list: logged decisions (decision_log) joined to the
deliveries that followed and their genuine engagement, per arm of the randomized control (docs/EVALUATION.md)."""
