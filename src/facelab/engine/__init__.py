"""Engines that run facelab's batch jobs on more than one process or machine (Ray)."""
