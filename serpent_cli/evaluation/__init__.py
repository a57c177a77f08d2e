"""`serpent eval`: scoring restorers on a folder under a seeded degradation; metrics; the Wiener baseline."""
