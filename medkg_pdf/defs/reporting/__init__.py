"""The daily quality report over every document: the asset, its SLO checks, job and schedule."""
