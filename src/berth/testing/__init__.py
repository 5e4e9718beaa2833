"""Test support: start a real berthd on a temporary root, run the docker CLI and docker-py against it.

Imports: anything.
"""
