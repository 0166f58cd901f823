"""Voice and picture recognition: upload checks, decoding, engine choice, pools, charging."""
