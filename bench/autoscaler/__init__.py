"""Benchmark: our autoscaler planner vs Ray's v2 ResourceDemandScheduler, same snapshots."""
