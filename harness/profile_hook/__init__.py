"""The folder `speedrun profile` puts first on a run's PYTHONPATH, so that Python imports its sitecustomize.py in
every process of the run (docs in that module)."""
