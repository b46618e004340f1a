"""Names of the files the sampler writes into a run folder (shared by writer and readers); their columns are
in columns.py."""

TELEMETRY_CSV = "telemetry.csv"  # one row per GPU per tick
ENERGY_CSV = "energy.csv"  # total-energy counter: start, 1 Hz, end
META_JSON = "telemetry_meta.json"  # sampler state ("running", "stopped", "died"), devices, rate
EXIT_JSON = "sampler_exit.json"  # written by the harness's SamplerHandle.stop: how the process ended
NPZ = "telemetry.npz"  # columnar copy written by summarize_run
