"""speedrun harness: run NanoGPT-speedrun tracks N times, record, test and verify the results."""

__version__ = "0.1.0"
