"""`serpent bench`: the models compared, FLOP counting, isolated measurements, plots."""
