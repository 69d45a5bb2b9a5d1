"""Tests on one multi-node Ray cluster (see conftest.py), shared by the files of this package."""
