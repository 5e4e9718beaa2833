"""berthd: the composition root that parses flags, builds the stores and services, and serves the API.

Imports: anything.
"""
