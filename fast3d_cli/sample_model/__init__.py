"""The tiny Chat-Scene-architecture model trained on the sample world (committed under sample_data/model)."""
