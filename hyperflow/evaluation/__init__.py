"""Paired evaluation of adaptation methods over the same episodes, and its report."""
