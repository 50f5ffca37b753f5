"""Target models. Chat-Scene is the reference family (spec §1)."""
