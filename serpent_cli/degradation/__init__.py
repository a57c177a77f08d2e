"""The degradations training and evaluation share: the fixed benchmark and the blind family."""
